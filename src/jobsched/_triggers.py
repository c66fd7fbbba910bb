"""Schedules: when a job fires.

A trigger is an immutable value with one question to answer,
``next_after(t)``: the first fire time strictly after ``t``, or ``None`` when
there is none. Triggers are pure functions of their fields (no clock, no
database); they are stored as the JSON-able dictionaries of
:meth:`CronTrigger.to_spec` and friends and read back with
:func:`trigger_from_spec`.

Policies:

* Every datetime a trigger returns is aware and in UTC, and all comparisons
  are made in UTC. Naive datetimes are rejected with :class:`InvalidTrigger`
  rather than guessed to be UTC or local time.
* Cron expressions follow Vixie cron (cronie): five fields, or six with
  ``seconds=True`` (seconds first); the aliases ``@yearly``, ``@annually``,
  ``@monthly``, ``@weekly``, ``@daily``, ``@midnight`` and ``@hourly``;
  three-letter month and weekday names; 0 and 7 both Sunday. ``N/STEP`` means
  ``N-MAX/STEP``, so ``0/5`` equals ``*/5``. Backwards ranges, zero steps,
  ``@reboot``, expressions that can never fire (``0 0 31 2 *``) and the
  extensions ``L``, ``W``, ``#``, ``?`` and ``H`` are rejected.
* Time zones are IANA names (``Europe/Berlin``, ``Etc/GMT+5``, also the
  backward-compatible links such as ``US/Eastern``), matched exactly, case
  included. Abbreviations (``PST``), offsets (``+05:30``) and the host-dependent
  names ``localtime``, ``posixrules`` and ``Factory`` are rejected.
* Daylight saving, as in Vixie cron: a cron schedule is *fixed-time* when
  neither its minute nor its hour field starts with ``*``. A fixed-time wall
  time inside a spring-forward gap fires once, at the end of the gap; a
  repeated fall-back wall time fires once, at its first occurrence. Other
  schedules fire at every wall time that exists, so they skip the gap and fire
  in both occurrences of a repeated hour.
* Intervals are elapsed time: ``start + k * every`` in UTC, never drifting and
  ignoring daylight saving. A wall-clock cadence such as "16:00 every Tuesday"
  needs a cron schedule (``0 16 * * 2``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar, Final, TypeAlias

from ._cron import CronSchedule, parse_cron
from ._errors import InvalidTrigger

_ZERO: Final = timedelta(0)
_UTC: Final = timezone.utc
_ONE_SECOND: Final = timedelta(seconds=1)
_DEFAULT_TIMEZONE: Final = "UTC"
#: Names that zoneinfo can load but that do not name a fixed IANA zone: they
#: depend on the host's configuration or exist only as placeholders.
_HOST_ZONE_NAMES: Final = frozenset({"localtime", "posixrules", "Factory"})
#: Bytes of the digest used to spread jitter; 8 bytes leave no visible bias.
_JITTER_DIGEST_BYTES: Final = 8


def validate_timezone(name: str) -> zoneinfo.ZoneInfo:
    """Return the IANA time zone called ``name``.

    Args:
        name: An IANA time zone name such as ``"Europe/Berlin"``.

    Returns:
        The loaded time zone.

    Raises:
        InvalidTrigger: ``name`` is not a string, is empty, or is not an IANA
            time zone name known to this host (abbreviations such as ``PST``
            and offsets such as ``+05:30`` are not names).
    """
    if not isinstance(name, str):
        raise InvalidTrigger(
            f"the time zone must be a string, got {type(name).__name__}"
        )
    return _load_timezone(name)


@functools.lru_cache(maxsize=256)
def _load_timezone(name: str) -> zoneinfo.ZoneInfo:
    """Load and check a time zone name; cached, as every trigger needs one."""
    if name != _DEFAULT_TIMEZONE and (
        name in _HOST_ZONE_NAMES or name not in _known_timezones()
    ):
        raise InvalidTrigger(_timezone_problem(name))
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as error:
        raise InvalidTrigger(_timezone_problem(name)) from error


@functools.cache
def _known_timezones() -> frozenset[str]:
    """Return the IANA names available on this host (slow, so cached)."""
    return frozenset(zoneinfo.available_timezones())


def _timezone_problem(name: str) -> str:
    """Return the message for an unusable time zone name."""
    if not name:
        return "the time zone name is empty; use an IANA name such as 'UTC'"
    return (
        f"unknown time zone {name!r}: use an IANA name such as 'Europe/Berlin' "
        "or 'Etc/GMT+5' (abbreviations and UTC offsets are not time zone names)"
    )


def _require_aware(value: object, what: str) -> datetime:
    """Return ``value`` in UTC, or raise if it is not an aware datetime."""
    if not isinstance(value, datetime):
        raise InvalidTrigger(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidTrigger(
            f"{what} needs an aware datetime (with a time zone), got naive "
            f"{value.isoformat()}; for example pass tzinfo=datetime.timezone.utc"
        )
    return value.astimezone(_UTC)


def _set(instance: object, name: str, value: object) -> None:
    """Assign a field of a frozen dataclass from its ``__post_init__``."""
    object.__setattr__(instance, name, value)


@dataclass(frozen=True)
class CronTrigger:
    """Fire at the times a cron expression matches, in an IANA time zone.

    Attributes:
        expression: Five fields (minute hour day-of-month month day-of-week),
            or six with a leading seconds field when ``seconds`` is true, or
            one of the aliases ``@yearly``, ``@annually``, ``@monthly``,
            ``@weekly``, ``@daily``, ``@midnight`` and ``@hourly``. ``N/STEP``
            means ``N-MAX/STEP``, so ``0/5`` in the minute field equals
            ``*/5``. Backwards ranges, zero steps, ``@reboot``, dates that never
            occur and the extensions ``L``, ``W``, ``#``, ``?`` and ``H`` are
            rejected.
        timezone: IANA name of the zone the fields are read in.
        seconds: Whether the expression starts with a seconds field.
        kind: ``"cron"``, the tag used in :meth:`to_spec`.

    Raises:
        InvalidTrigger: On construction, for a malformed expression or an
            unknown time zone; the message names the expression and field.
    """

    expression: str
    timezone: str = _DEFAULT_TIMEZONE
    seconds: bool = False
    kind: ClassVar[str] = "cron"
    _schedule: CronSchedule = field(init=False, repr=False, compare=False)
    _zone: zoneinfo.ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Parse and validate the expression and the time zone."""
        if not isinstance(self.expression, str):
            raise InvalidTrigger(
                "the cron expression must be a string, got "
                f"{type(self.expression).__name__}"
            )
        if not isinstance(self.seconds, bool):
            raise InvalidTrigger(f"seconds must be True or False, got {self.seconds!r}")
        _set(self, "_schedule", parse_cron(self.expression, seconds=self.seconds))
        _set(self, "_zone", validate_timezone(self.timezone))

    @property
    def fixed_time(self) -> bool:
        """Whether neither the minute nor the hour field starts with ``*``.

        Fixed-time schedules fire once on daylight-saving changes: at the end of
        a spring-forward gap for a wall time inside it, and at the first
        occurrence of a repeated wall time. The seconds field plays no part.
        """
        return self._schedule.fixed_time

    def next_after(self, after: datetime) -> datetime | None:
        """Return the first fire time strictly after ``after``.

        Args:
            after: An aware datetime, in any time zone.

        Returns:
            The fire time, aware and in UTC, or ``None`` if there is none before
            the year 9999.

        Raises:
            InvalidTrigger: ``after`` is naive.
        """
        start = _require_aware(after, "after").replace(tzinfo=None)
        try:
            found = self._schedule.next_after(start, self._zone)
        except OverflowError:  # at the very ends of the calendar
            return None
        return None if found is None else found.replace(tzinfo=_UTC)

    def to_spec(self) -> dict[str, Any]:
        """Return a JSON-able description; see :func:`trigger_from_spec`."""
        return {
            "kind": self.kind,
            "expression": self.expression,
            "timezone": self.timezone,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class IntervalTrigger:
    """Fire every ``every`` of elapsed time, at ``start + k * every``.

    The arithmetic is in UTC, so daylight-saving changes neither stretch nor
    shrink an interval, and the fire times never drift from the anchor.

    Attributes:
        every: The interval; must be positive.
        start: The anchor and first fire time, aware (stored in UTC). ``None``
            leaves the anchor to the scheduler, which sets it with
            :meth:`with_start` at registration.
        end: No fire times after this aware instant (stored in UTC); a fire
            time equal to ``end`` still fires.
        jitter: Upper bound (exclusive) of the random delay that
            :meth:`jitter_for` adds to each fire time; ``0 <= jitter < every``.
        kind: ``"interval"``, the tag used in :meth:`to_spec`.

    Raises:
        InvalidTrigger: On construction, for a non-positive interval, a naive
            datetime, an ``end`` before ``start`` or a jitter out of range.
    """

    every: timedelta
    start: datetime | None = None
    end: datetime | None = None
    jitter: timedelta = _ZERO
    kind: ClassVar[str] = "interval"

    def __post_init__(self) -> None:
        """Validate the fields and normalise the datetimes to UTC."""
        if not isinstance(self.every, timedelta) or self.every <= _ZERO:
            raise InvalidTrigger(
                f"the interval must be a positive timedelta, got {self.every!r}"
            )
        if not isinstance(self.jitter, timedelta) or not (
            _ZERO <= self.jitter < self.every
        ):
            raise InvalidTrigger(
                f"jitter must be a timedelta of at least 0 and less than the "
                f"interval ({self.every}), got {self.jitter!r}"
            )
        if self.start is not None:
            _set(self, "start", _require_aware(self.start, "the interval start"))
        if self.end is not None:
            _set(self, "end", _require_aware(self.end, "the interval end"))
        if self.start is not None and self.end is not None and self.end < self.start:
            raise InvalidTrigger(
                f"the interval ends ({self.end.isoformat()}) before it starts "
                f"({self.start.isoformat()}), so it would never fire"
            )

    @classmethod
    def of(
        cls,
        *,
        weeks: float = 0,
        days: float = 0,
        hours: float = 0,
        minutes: float = 0,
        seconds: float = 0,
        start: datetime | None = None,
        end: datetime | None = None,
        jitter: float | timedelta = 0,
    ) -> IntervalTrigger:
        """Build an interval trigger from its parts, like :class:`~datetime.timedelta`.

        Args:
            weeks: Weeks in the interval.
            days: Days in the interval.
            hours: Hours in the interval.
            minutes: Minutes in the interval.
            seconds: Seconds in the interval.
            start: The aware anchor, or ``None`` to let the scheduler choose.
            end: An aware instant after which the trigger stops, or ``None``.
            jitter: Maximum random delay, in seconds or as a timedelta.

        Returns:
            The trigger.

        Raises:
            InvalidTrigger: The parts do not make a valid interval.
        """
        try:
            every = timedelta(
                weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds
            )
            spread = jitter if isinstance(jitter, timedelta) else _seconds(jitter)
        except (TypeError, ValueError, OverflowError) as error:
            raise InvalidTrigger(f"invalid interval: {error}") from None
        return cls(every=every, start=start, end=end, jitter=spread)

    def next_after(self, after: datetime) -> datetime | None:
        """Return the smallest ``start + k * every`` (k >= 0) after ``after``.

        Without a start, the next fire time is ``after + every``.

        Args:
            after: An aware datetime, in any time zone.

        Returns:
            The fire time, aware and in UTC, or ``None`` past ``end``.

        Raises:
            InvalidTrigger: ``after`` is naive.
        """
        moment = _require_aware(after, "after")
        try:
            if self.start is None:
                fire = moment + self.every
            elif moment < self.start:
                fire = self.start
            else:
                fire = (
                    self.start + ((moment - self.start) // self.every + 1) * self.every
                )
        except OverflowError:
            return None
        if self.end is not None and fire > self.end:
            return None
        return fire

    def with_start(self, start: datetime) -> IntervalTrigger:
        """Return a copy anchored at ``start``.

        Args:
            start: The new aware anchor.

        Returns:
            The anchored trigger.

        Raises:
            InvalidTrigger: ``start`` is naive or after ``end``.
        """
        return dataclasses.replace(self, start=start)

    def jitter_for(self, key: str, fire: datetime) -> timedelta:
        """Return the delay to add to one fire time, in ``[0, jitter)``.

        The value depends only on ``key`` and the instant ``fire``, so every
        process computes the same delay for the same run.

        Args:
            key: What the delay is for, typically the job's name.
            fire: The aware fire time being delayed.

        Returns:
            The delay; zero when the trigger has no jitter.

        Raises:
            InvalidTrigger: ``fire`` is naive.
        """
        instant = _require_aware(fire, "fire")
        if not self.jitter:
            return _ZERO
        text = f"{key}\x00{instant.isoformat()}".encode(errors="surrogatepass")
        digest = hashlib.sha256(text).digest()[:_JITTER_DIGEST_BYTES]
        spread = self.jitter // timedelta.resolution
        return int.from_bytes(digest, "big") % spread * timedelta.resolution

    def to_spec(self) -> dict[str, Any]:
        """Return a JSON-able description; see :func:`trigger_from_spec`.

        Durations are seconds (an integer when whole); datetimes are ISO 8601
        strings with their UTC offset.
        """
        return {
            "kind": self.kind,
            "every": _number(self.every),
            "start": None if self.start is None else self.start.isoformat(),
            "end": None if self.end is None else self.end.isoformat(),
            "jitter": _number(self.jitter),
        }


@dataclass(frozen=True)
class OnceTrigger:
    """Fire once, at ``at``.

    Attributes:
        at: The fire time. It must be aware (naive datetimes are rejected
            rather than guessed) and is stored in UTC.
        kind: ``"once"``, the tag used in :meth:`to_spec`.

    Raises:
        InvalidTrigger: On construction, if ``at`` is not an aware datetime.
    """

    at: datetime
    kind: ClassVar[str] = "once"

    def __post_init__(self) -> None:
        """Check that ``at`` is aware and normalise it to UTC."""
        _set(self, "at", _require_aware(self.at, "a one-off job's time"))

    def next_after(self, after: datetime) -> datetime | None:
        """Return ``at`` if it is after ``after``, else ``None``.

        Args:
            after: An aware datetime, in any time zone.

        Returns:
            The fire time in UTC, or ``None``.

        Raises:
            InvalidTrigger: ``after`` is naive.
        """
        return self.at if self.at > _require_aware(after, "after") else None

    def to_spec(self) -> dict[str, Any]:
        """Return a JSON-able description; see :func:`trigger_from_spec`."""
        return {"kind": self.kind, "at": self.at.isoformat()}


Trigger: TypeAlias = CronTrigger | IntervalTrigger | OnceTrigger


def _number(duration: timedelta) -> int | float:
    """Return a duration in seconds, as an exact integer when it is whole."""
    if duration.microseconds:
        return duration / _ONE_SECOND
    return duration // _ONE_SECOND


def _seconds(value: object) -> timedelta:
    """Return a number of seconds as a timedelta (bools are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number of seconds, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number of seconds, got {value!r}")
    return timedelta(seconds=value)


def _instant(value: object) -> datetime:
    """Return an aware datetime parsed from an ISO 8601 string."""
    if not isinstance(value, str):
        raise TypeError(f"expected an ISO 8601 string, got {value!r}")
    if value.endswith(("Z", "z")):  # Python 3.10 does not read a "Z" suffix
        value = value[:-1] + "+00:00"
    return datetime.fromisoformat(value)


def _optional_instant(value: object) -> datetime | None:
    """Return :func:`_instant` of ``value``, or ``None`` for ``None``."""
    return None if value is None else _instant(value)


def _cron_from(fields: Mapping[str, Any]) -> CronTrigger:
    """Build a :class:`CronTrigger` from the fields of a spec."""
    return CronTrigger(
        expression=fields["expression"],
        timezone=fields.get("timezone", _DEFAULT_TIMEZONE),
        seconds=fields.get("seconds", False),
    )


def _interval_from(fields: Mapping[str, Any]) -> IntervalTrigger:
    """Build an :class:`IntervalTrigger` from the fields of a spec."""
    return IntervalTrigger(
        every=_seconds(fields["every"]),
        start=_optional_instant(fields.get("start")),
        end=_optional_instant(fields.get("end")),
        jitter=_seconds(fields.get("jitter", 0)),
    )


def _once_from(fields: Mapping[str, Any]) -> OnceTrigger:
    """Build a :class:`OnceTrigger` from the fields of a spec."""
    return OnceTrigger(at=_instant(fields["at"]))


_Builder: TypeAlias = Callable[[Mapping[str, Any]], Trigger]
#: For each kind: its builder, its required keys and its optional keys.
_KINDS: Final[Mapping[str, tuple[_Builder, frozenset[str], frozenset[str]]]] = {
    "cron": (
        _cron_from,
        frozenset({"expression"}),
        frozenset({"timezone", "seconds"}),
    ),
    "interval": (
        _interval_from,
        frozenset({"every"}),
        frozenset({"start", "end", "jitter"}),
    ),
    "once": (_once_from, frozenset({"at"}), frozenset()),
}


def trigger_from_spec(spec: Mapping[str, Any]) -> Trigger:
    """Rebuild a trigger from the dictionary its ``to_spec`` returned.

    Args:
        spec: A mapping with a ``"kind"`` of ``"cron"``, ``"interval"`` or
            ``"once"`` and that kind's fields.

    Returns:
        The trigger, equal to the one that produced ``spec``.

    Raises:
        InvalidTrigger: ``spec`` is malformed in any way: not a mapping, an
            unknown kind, missing or unknown keys, or invalid values.
    """
    if not isinstance(spec, Mapping):
        raise InvalidTrigger(f"a trigger spec must be a mapping, got {spec!r}")
    kind = spec.get("kind")
    if not isinstance(kind, str) or kind not in _KINDS:
        raise InvalidTrigger(
            f"unknown trigger kind {kind!r}; expected one of {', '.join(_KINDS)}"
        )
    build, required, optional = _KINDS[kind]
    keys = set(spec) - {"kind"}
    missing, unknown = required - keys, keys - required - optional
    if missing or unknown:
        raise InvalidTrigger(
            f"malformed {kind} trigger spec {dict(spec)!r}: missing keys "
            f"{sorted(missing)}, unknown keys {sorted(map(str, unknown))}"
        )
    try:
        return build(spec)
    except InvalidTrigger:
        raise
    except (TypeError, ValueError, OverflowError) as error:
        raise InvalidTrigger(
            f"malformed {kind} trigger spec {dict(spec)!r}: {error}"
        ) from None


def preview(trigger: Trigger, after: datetime, count: int) -> list[datetime]:
    """Return the next ``count`` fire times of ``trigger`` after ``after``.

    Args:
        trigger: Any trigger.
        after: An aware datetime; every fire time returned is strictly later.
        count: How many fire times to return, at most.

    Returns:
        Up to ``count`` fire times in UTC, increasing; fewer if the trigger
        stops firing.

    Raises:
        InvalidTrigger: ``count`` is negative or ``after`` is naive.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise InvalidTrigger(f"count must be a whole number >= 0, got {count!r}")
    times: list[datetime] = []
    moment: datetime | None = _require_aware(after, "after")
    while moment is not None and len(times) < count:
        moment = trigger.next_after(moment)
        if moment is not None:
            times.append(moment)
    return times
