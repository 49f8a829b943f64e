"""Cron semantics in one place: parsing, validation and fire times in an IANA timezone.

Expressions have exactly five fields (minute hour day-of-month month day-of-week) and
are evaluated with cronsim in the schedule's own timezone, so wall-clock schedules
follow daylight-saving changes the way cron does. The same functions decide when beat
fires and which nominal occurrence a fire belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, available_timezones

from celery.schedules import crontab
from cronsim import CronSim, CronSimError

FIELD_NAMES = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
# Column sizes of django-celery-beat's CrontabSchedule and of ScheduledTask.cron.
FIELD_MAX_LENGTHS = {
    "minute": 240,
    "hour": 96,
    "day_of_month": 124,
    "month_of_year": 64,
    "day_of_week": 64,
}
MAX_EXPRESSION_LENGTH = 120
_HORIZON = timedelta(days=366 * 5)


class CronError(ValueError):
    """The cron expression or timezone is not usable."""


@dataclass(frozen=True)
class Cron:
    expression: str
    timezone: str

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def fields(self) -> dict[str, str]:
        """The five fields as django-celery-beat's CrontabSchedule stores them."""
        return dict(zip(FIELD_NAMES, self.expression.split(), strict=True))

    def next_after(self, moment: datetime) -> datetime | None:
        """The first fire time strictly after ``moment``, in UTC (None past the horizon)."""
        moment = moment.astimezone(UTC)
        local = moment.astimezone(self.zone)
        try:
            sim = CronSim(self.expression, local)
            fire = next(sim)
            # In a repeated (fall-back) hour cronsim counts on from the wall clock and
            # may answer the earlier instant of that wall-clock time; skip such answers.
            while fire.astimezone(UTC) <= moment:
                fire = next(sim)
        except (StopIteration, CronSimError):
            return None
        if fire - local > _HORIZON:
            return None
        return fire.astimezone(UTC)

    def latest_at_or_before(self, moment: datetime) -> datetime | None:
        """The most recent fire time at or before ``moment``, in UTC."""
        moment = moment.astimezone(UTC)
        start = moment.astimezone(self.zone).replace(second=0, microsecond=0) + timedelta(minutes=1)
        try:
            fire = next(CronSim(self.expression, start, reverse=True)).astimezone(UTC)
        except (StopIteration, CronSimError):
            return None
        # In a repeated (fall-back) hour the wall clock runs backwards, so a fire that
        # already happened can lie "ahead" of it; step forward to the real latest one.
        while (later := self.next_after(fire)) is not None and later <= moment:
            fire = later
        return fire

    def upcoming(
        self, after: datetime, count: int, before: datetime | None = None
    ) -> list[datetime]:
        """Up to ``count`` fire times after ``after`` (and before ``before``, if given)."""
        runs: list[datetime] = []
        moment: datetime | None = after
        while moment is not None and len(runs) < count:
            moment = self.next_after(moment)
            if moment is None or (before is not None and moment >= before):
                break
            runs.append(moment)
        return runs


def validate_timezone(name: str) -> str:
    if not isinstance(name, str) or name not in _zone_names():
        raise CronError(
            f"{name!r} is not an IANA timezone name (for example 'Europe/Paris' or 'UTC')"
        )
    return name


def _zone_names() -> frozenset[str]:
    global _ZONES
    if _ZONES is None:
        _ZONES = frozenset(available_timezones())
    return _ZONES


_ZONES: frozenset[str] | None = None


def _normalize_weekday(field: str) -> str:
    """Cron allows 7 for Sunday; Celery only 0-6."""
    parts = []
    for part in field.split(","):
        if part == "7":
            part = "0"
        elif part.endswith("-7") and part.count("-") == 1:
            part = f"{part[:-2]}-6,0" if part[:-2] != "6" else "6,0"
        parts.append(part)
    return ",".join(parts)


def parse(expression: str, timezone: str = "UTC") -> Cron:
    """Validate and normalise a 5-field cron expression; raise CronError saying why."""
    if not isinstance(expression, str):
        raise CronError("must be a string of 5 fields, such as '0 9 * * 1-5'")
    fields = expression.split()
    if len(fields) != 5:
        raise CronError(
            f"must have exactly 5 fields (minute hour day month weekday), got {len(fields)}"
        )
    fields[4] = _normalize_weekday(fields[4])
    normalized = " ".join(fields)
    for name, value in zip(FIELD_NAMES, fields, strict=True):
        if len(value) > FIELD_MAX_LENGTHS[name]:
            raise CronError(
                f"its {name.replace('_', ' ')} field is longer than "
                f"{FIELD_MAX_LENGTHS[name]} characters"
            )
    if len(normalized) > MAX_EXPRESSION_LENGTH:
        raise CronError(f"is longer than {MAX_EXPRESSION_LENGTH} characters")
    validate_timezone(timezone)
    try:
        crontab(**dict(zip(FIELD_NAMES, fields, strict=True)))
        CronSim(normalized, datetime.now(UTC))
    except (ValueError, CronSimError) as exc:
        raise CronError(f"is not a valid cron expression: {exc}") from None
    cron = Cron(normalized, timezone)
    if cron.next_after(datetime.now(UTC)) is None:
        raise CronError("never fires (no date matches it)")
    return cron
