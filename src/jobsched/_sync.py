"""Writing registered jobs to the table: insert once, update on edit, else nothing.

Every process registers the same jobs at start-up, so this runs many times for
each job; it must be idempotent and race-free. A missing row is inserted (a
process that loses the insert race reads the winner's row instead); an unchanged
registration writes nothing, so it never resets a next run time or disturbs a
run in progress; an edited schedule replaces the stored one and moves the next
run time to the new schedule's next fire time after now, without running at once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ._clock import Clock
from ._decide import with_jitter
from ._models import JobOptions, JobState
from ._registry import JobSpec, encode_args
from ._rows import JobRow
from ._store import Store
from ._triggers import IntervalTrigger, OnceTrigger, Trigger

logger = logging.getLogger(__name__)

# Rereads of a row that another process changed between our read and our write.
SYNC_ATTEMPTS = 3


def dump(value: Mapping[str, Any]) -> str:
    """Return canonical JSON text for a mapping (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def same_schedule(declared: Trigger, stored_text: str) -> bool:
    """Tell whether a registered trigger is the one stored.

    An interval registered without ``start`` is anchored when first stored, so
    the stored anchor is not compared.
    """
    try:
        stored = json.loads(stored_text)
    except ValueError:
        return False
    if not isinstance(stored, dict):
        return False

    spec = json.loads(dump(declared.to_spec()))
    if isinstance(declared, IntervalTrigger) and declared.start is None:
        stored.pop("start", None)
        spec.pop("start", None)
    return bool(stored == spec)


class Synchronizer:
    """Keeps job rows in line with their registrations.

    Args:
        store: Where the rows are.
        clock: The scheduler's clock.
    """

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    def first_fire(self, trigger: Trigger, name: str) -> datetime | None:
        """Return a new row's first run time: a one-off's own time, even if past."""
        if isinstance(trigger, OnceTrigger):
            return trigger.at
        return with_jitter(trigger, name, trigger.next_after(self.clock.now()))

    def resolve(self, trigger: Trigger) -> Trigger:
        """Anchor an interval registered without a start at the current time."""
        if isinstance(trigger, IntervalTrigger) and trigger.start is None:
            return trigger.with_start(self.clock.now())
        return trigger

    def row_values(
        self,
        name: str,
        function: str,
        trigger: Trigger,
        args_text: str,
        options: JobOptions,
        paused: bool = False,
    ) -> dict[str, Any]:
        """Return the columns of a new job row."""
        first = self.first_fire(trigger, name)
        status = JobState.SCHEDULED if first is not None else JobState.DONE
        if paused:
            status = JobState.PAUSED
        return {
            "name": name,
            "function": function,
            "trigger": dump(trigger.to_spec()),
            "args": args_text,
            "options": dump(options.to_json()),
            "status": status.value,
            "paused": paused,
            "next_run_at": first,
        }

    def sync(self, spec: JobSpec) -> None:
        """Make the row of a scheduled job match its registration."""
        trigger = spec.trigger
        if trigger is None:
            return

        args_text = encode_args(spec.name, spec.args, spec.kwargs)
        for _ in range(SYNC_ATTEMPTS):
            row = self.store.get_row(spec.name)
            if row is None:
                values = self.row_values(
                    spec.name,
                    spec.name,
                    self.resolve(trigger),
                    args_text,
                    spec.options,
                    spec.paused,
                )
                if self.store.insert_job(values, self.clock.now()):
                    logger.info("job %r added to the table", spec.name)
                    return
                continue

            values = self.changes(spec, trigger, row, args_text)
            if not values or self.store.update_job(row, values, self.clock.now()):
                return

    def changes(
        self, spec: JobSpec, trigger: Trigger, row: JobRow, args_text: str
    ) -> dict[str, Any]:
        """Return the columns of ``row`` that differ from the registration."""
        values: dict[str, Any] = {}
        options_text = dump(spec.options.to_json())
        if row.args != args_text:
            values["args"] = args_text
        if row.options != options_text:
            values["options"] = options_text
        if row.function != spec.name:
            values["function"] = spec.name
        if same_schedule(trigger, row.trigger) and row.status is not JobState.BROKEN:
            return values

        resolved = self.resolve(trigger)
        values["trigger"] = dump(resolved.to_spec())
        values["error"] = None
        logger.info("job %r has a new schedule: %s", spec.name, values["trigger"])
        if row.status is JobState.RUNNING:
            return values  # the run in progress moves it on with the new schedule

        first = self.first_fire(resolved, spec.name)
        values.update(next_run_at=first, scheduled_for=None, attempt=0)
        if row.status is not JobState.PAUSED:
            ended = first is None
            values["status"] = (JobState.DONE if ended else JobState.SCHEDULED).value
        return values
