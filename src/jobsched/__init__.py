"""jobsched: a job scheduler that any number of processes can share.

Register plain functions with :meth:`Scheduler.job`, then call
:meth:`Scheduler.run_pending` from a loop you already have, or
:meth:`Scheduler.start` to poll in a background thread. Every process that does
so on one database shares one jobs table, and each due run executes once.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError as _NotInstalled
from importlib.metadata import version as _version

from ._clock import Clock as Clock
from ._clock import DatabaseClock as DatabaseClock
from ._clock import SystemClock as SystemClock
from ._errors import ConfigurationError as ConfigurationError
from ._errors import DuplicateJob as DuplicateJob
from ._errors import InvalidArguments as InvalidArguments
from ._errors import InvalidTrigger as InvalidTrigger
from ._errors import JobDefinitionError as JobDefinitionError
from ._errors import JobNotFound as JobNotFound
from ._errors import JobschedError as JobschedError
from ._errors import SchedulerStateError as SchedulerStateError
from ._errors import SchemaVersionError as SchemaVersionError
from ._errors import StoreError as StoreError
from ._events import Event as Event
from ._events import JobBroken as JobBroken
from ._events import JobEvent as JobEvent
from ._events import LeaseExpired as LeaseExpired
from ._events import RunEvent as RunEvent
from ._events import RunFailed as RunFailed
from ._events import RunsMissed as RunsMissed
from ._events import RunStarted as RunStarted
from ._events import RunSucceeded as RunSucceeded
from ._models import JobInfo as JobInfo
from ._models import JobState as JobState
from ._models import Misfire as Misfire
from ._models import Overlap as Overlap
from ._models import Page as Page
from ._models import RunInfo as RunInfo
from ._models import RunOutcome as RunOutcome
from ._models import RunResult as RunResult
from ._runner import RunContext as RunContext
from ._runner import current_run as current_run
from ._scheduler import Scheduler as Scheduler
from ._tables import SCHEMA_VERSION as SCHEMA_VERSION
from ._tables import define_tables as define_tables
from ._triggers import CronTrigger as CronTrigger
from ._triggers import IntervalTrigger as IntervalTrigger
from ._triggers import OnceTrigger as OnceTrigger
from ._triggers import Trigger as Trigger

try:
    __version__ = _version("jobsched")
except _NotInstalled:  # running from a source tree without installing
    __version__ = "0.0.0"

__all__ = [
    "SCHEMA_VERSION",
    "Clock",
    "ConfigurationError",
    "CronTrigger",
    "DatabaseClock",
    "DuplicateJob",
    "Event",
    "IntervalTrigger",
    "InvalidArguments",
    "InvalidTrigger",
    "JobBroken",
    "JobDefinitionError",
    "JobEvent",
    "JobInfo",
    "JobNotFound",
    "JobState",
    "JobschedError",
    "LeaseExpired",
    "Misfire",
    "OnceTrigger",
    "Overlap",
    "Page",
    "RunContext",
    "RunEvent",
    "RunFailed",
    "RunInfo",
    "RunOutcome",
    "RunResult",
    "RunStarted",
    "RunSucceeded",
    "RunsMissed",
    "Scheduler",
    "SchedulerStateError",
    "SchemaVersionError",
    "StoreError",
    "SystemClock",
    "Trigger",
    "__version__",
    "current_run",
    "define_tables",
]
