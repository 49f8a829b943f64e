"""Cron semantics in one place: parsing, validation and fire times in an IANA timezone.

Expressions have exactly five fields (minute hour day-of-month month day-of-week). The
fields are matched against the *local wall clock* of the schedule's own timezone; cronsim
enumerates matching wall-clock times (naively, as calendar values) and this module turns
each into real instants. Daylight-saving changes are handled by these rules (the user
documentation is docs/when-does-my-task-run.md):

* Wall-clock schedules - the hour field is a number, a range or a list of them (no ``*``,
  no ``/``), e.g. ``30 2 * * *``: every matching local time fires exactly once. A time in
  a skipped stretch (spring forward) fires at the first instant after the gap; a time in
  a repeated stretch (fall back) fires at the first of its two instants.
* Absolute-time schedules - the hour field contains ``*`` or a step ``/``, e.g.
  ``*/30 * * * *`` or ``0 */2 * * *``: they fire at every real instant whose local wall
  clock matches, so a skipped stretch has no fires and a repeated one has its fires twice
  on the wall clock, while no instant is lost or doubled in UTC.
* Fire times strictly increase; two matching times that land on the same instant (two
  skipped times moved to the end of the same gap) are one fire.

The same functions decide when beat fires and which nominal occurrence (the execution
key, in UTC) a fire belongs to. ``Cron.upcoming_marked`` also says, per fire, which of
these rules placed it (a ``Mark``: shifted, merged, repeated, or the first fire after a
gap), for the previews.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple
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
_SECOND = timedelta(seconds=1)
_ZERO = timedelta(0)


class CronError(ValueError):
    """The cron expression or timezone is not usable."""


SHIFTED, MERGED, REPEATED, GAP = "shifted", "merged", "repeated", "gap"


@dataclass(frozen=True)
class Mark:
    """Why a fire is not simply "the matching clock time, once": a daylight-saving change.

    * ``shifted``: a wall-clock time inside a skipped stretch, run at the first instant
      after it;
    * ``merged``: a wall-clock time that happens twice, run once, at the first;
    * ``repeated``: an absolute-time fire in a repeated stretch (the clock shows that time
      twice, and the task runs at both);
    * ``gap``: the first absolute-time fire after a skipped stretch whose times did not run.
    """

    kind: str
    note: str
    walls: tuple[datetime, ...] = dataclass_field(default=(), compare=False, repr=False)


class Placement(NamedTuple):
    """Where one matching naive local time lands: its fires (UTC, ascending, each with its
    mark), bounds for the walks (see ``Cron._place``), and for an absolute-time time that
    never happens, the end of the gap that swallowed it."""

    fires: list[tuple[datetime, Mark | None]]
    low: datetime
    high: datetime
    lost_in_gap: datetime | None = None


def _hm(moment: datetime) -> str:
    return f"{moment:%H:%M}"


def _utc_offset(moment: datetime) -> str:
    minutes = int(_offset(moment).total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _times(walls: tuple[datetime, ...]) -> str:
    names = [_hm(wall) for wall in sorted(set(walls))]
    if len(names) > 4:
        return f"{len(names)} clock times from {names[0]} to {names[-1]}"
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def shifted_mark(walls: tuple[datetime, ...], end: datetime, zone: ZoneInfo) -> Mark:
    """Wall-clock times inside a gap, all run at ``end`` (UTC), the first instant after it."""
    local = end.astimezone(zone)
    day = min(walls).date()
    verb = "does" if len(set(walls)) == 1 else "do"
    at = _hm(local) if local.date() == day else f"{_hm(local)} on {local.date()}"
    once = "" if len(set(walls)) == 1 else "once, "
    note = f"{_times(walls)} {verb} not exist on {day} in {zone.key}; runs {once}at {at}"
    return Mark(SHIFTED, note, walls)


def _merged_mark(wall: datetime, first: datetime, zone: ZoneInfo) -> Mark:
    local = first.astimezone(zone)
    note = (
        f"{_hm(wall)} happens twice on {wall.date()} in {zone.key} (the clocks go back); "
        f"runs once, at the first {_hm(wall)} ({_utc_offset(local)})"
    )
    return Mark(MERGED, note, (wall,))


def _repeated_mark(wall: datetime, instant: datetime, zone: ZoneInfo, which: str) -> Mark:
    local = instant.astimezone(zone)
    note = (
        f"{_hm(wall)} happens twice on {wall.date()} in {zone.key} (the clocks go back); "
        f"this is the {which} {_hm(wall)} ({_utc_offset(local)})"
    )
    return Mark(REPEATED, note, (wall,))


def _gap_mark(walls: tuple[datetime, ...], end: datetime, zone: ZoneInfo) -> Mark:
    after = end.astimezone(zone)
    before = (end - _SECOND).astimezone(zone)
    start = (end + _offset(before)).replace(tzinfo=None)  # the clock just before the jump
    note = (
        f"no runs between {_hm(start)} and {_hm(after)} on {start.date()} in {zone.key}: "
        f"the clocks skip that stretch, so {_times(walls)} did not happen"
    )
    return Mark(GAP, note, walls)


def merge_marks(
    first: Mark | None, second: Mark | None, end: datetime, zone: ZoneInfo
) -> Mark | None:
    """The mark of one fire placed twice (two times moved to the same instant)."""
    if first is None or second is None:
        return first or second
    if first.kind == second.kind == SHIFTED:
        return shifted_mark(first.walls + second.walls, end, zone)
    return first


def _for_cronsim(expression: str) -> str:
    """The expression as cronsim should read it.

    cronsim reads a one-value range with a step (``0-0/2``) like ``0/2`` (0, 2, 4, ...);
    cron and Celery mean just that one value, so such a part is passed on as the value.
    """
    fields = []
    for field in expression.split():
        parts = []
        for part in field.split(","):
            spec, slash, _ = part.partition("/")
            low, dash, high = spec.partition("-")
            same = low.upper() == high.upper() or (
                low.isdigit() and high.isdigit() and int(low) == int(high)
            )
            parts.append(low if slash and dash and same else part)
        fields.append(",".join(parts))
    return " ".join(fields)


def _offset(moment: datetime) -> timedelta:
    """The UTC offset of an aware datetime (ZoneInfo always knows it)."""
    offset = moment.utcoffset()
    assert offset is not None
    return offset


@dataclass(frozen=True)
class Cron:
    expression: str
    timezone: str

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def follows_absolute_time(self) -> bool:
        """True when the hour field has ``*`` or a step: the schedule then fires at every
        real instant whose wall clock matches, instead of once per wall-clock time."""
        hour = self.expression.split()[1]
        return "*" in hour or "/" in hour

    def fields(self) -> dict[str, str]:
        """The five fields as django-celery-beat's CrontabSchedule stores them."""
        return dict(zip(FIELD_NAMES, self.expression.split(), strict=True))

    def next_after(self, moment: datetime) -> datetime | None:
        """The first fire time strictly after ``moment``, in UTC (None past the horizon)."""
        fire, _ = next(self._walk(moment), (None, None))
        return fire

    def latest_at_or_before(self, moment: datetime) -> datetime | None:
        """The most recent fire time at or before ``moment``, in UTC (None past the horizon)."""
        return next(self._backward(moment), None)

    def upcoming(
        self, after: datetime, count: int, before: datetime | None = None
    ) -> list[datetime]:
        """Up to ``count`` fire times after ``after`` (and before ``before``, if given)."""
        runs: list[datetime] = []
        if count <= 0:
            return runs
        for fire in self._forward(after):
            if before is not None and fire >= before:
                break
            runs.append(fire)
            if len(runs) >= count:
                break
        return runs

    def upcoming_marked(
        self, after: datetime, count: int, before: datetime | None = None
    ) -> list[tuple[datetime, Mark | None]]:
        """``upcoming`` with each fire's daylight-saving ``Mark`` (None on ordinary times).

        The fires are exactly ``upcoming``'s: both come from the same walk and placement."""
        runs: list[tuple[datetime, Mark | None]] = []
        if count <= 0:
            return runs
        for fire, mark in self._walk(after):
            if runs and fire == runs[-1][0]:  # one fire; say why both times are there
                runs[-1] = (fire, merge_marks(runs[-1][1], mark, fire, self.zone))
                continue
            if len(runs) >= count or (before is not None and fire >= before):
                break
            runs.append((fire, mark))
        return runs

    # --- from matching wall-clock times to instants ----------------------------------
    #
    # cronsim walks naive local wall-clock times (no timezone, so no DST quirks of its
    # own); each matching wall time is placed on the real time line here. Fires of
    # neighbouring wall times can interleave (the second pass of a repeated hour comes
    # after the first pass of later wall times), so both walks keep a small sorted list
    # of pending fires and hand one out only once no later wall time can beat it.

    def _place(self, wall: datetime, zone: ZoneInfo, absolute: bool) -> Placement:
        """Fires (UTC, ascending, with their marks) of the matching naive local time
        ``wall``, and bounds ``low``/``high``: no fire of ``wall`` or a later wall time is
        before ``low``, and no fire of ``wall`` or an earlier wall time is after ``high``."""
        first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
        second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
        if first == second:  # an ordinary local time: one instant
            return Placement([(first, None)], first, first)
        if first < second:
            # Repeated (fall back): absolute-time schedules fire at both instants;
            # wall-clock schedules once, at the first of the two.
            if absolute:
                both: list[tuple[datetime, Mark | None]] = [
                    (first, _repeated_mark(wall, first, zone, "first")),
                    (second, _repeated_mark(wall, second, zone, "second")),
                ]
                return Placement(both, first, second)
            return Placement([(first, _merged_mark(wall, first, zone))], first, first)
        # Skipped (spring forward): fold=1 reads the time with the offset after the
        # change, fold=0 with the one before, so the change lies between them.
        # Wall-clock schedules fire at the first instant after the gap; absolute-time
        # schedules do not fire (that wall-clock time never happens).
        end = self._gap_end(second, first, zone)
        if absolute:
            return Placement([], end, end, lost_in_gap=end)
        return Placement([(end, shifted_mark((wall,), end, zone))], end, end)

    @staticmethod
    def _gap_end(before: datetime, after: datetime, zone: ZoneInfo) -> datetime:
        """The instant of the offset change between ``before`` and ``after`` (UTC)."""
        old = _offset(before.astimezone(zone))
        while after - before > _SECOND:
            middle = before + _SECOND * ((after - before) // _SECOND // 2)
            if _offset(middle.astimezone(zone)) == old:
                before = middle
            else:
                after = middle
        return after

    def _forward(self, moment: datetime) -> Iterator[datetime]:
        """Fire times strictly after ``moment``, ascending, in UTC, up to the horizon."""
        last = None
        for fire, _ in self._walk(moment):
            if fire != last:  # equal instants are one fire
                last = fire
                yield fire

    def _walk(self, moment: datetime) -> Iterator[tuple[datetime, Mark | None]]:
        """Fires strictly after ``moment`` with their marks, in UTC, up to the horizon, in
        non-decreasing order: two times placed on the same instant both come (the caller
        keeps one fire)."""
        zone, absolute = self.zone, self.follows_absolute_time
        local = moment.astimezone(zone)
        start = local.replace(tzinfo=None, fold=0)
        # In the first pass of a repeated hour, earlier wall times still have their
        # second instant ahead: start the walk that much earlier on the wall clock.
        start -= max(_ZERO, _offset(local) - _offset(local.replace(fold=1)))
        try:
            walls = CronSim(_for_cronsim(self.expression), start)
        except CronSimError:
            return
        last = moment.astimezone(UTC)
        pending: list[tuple[datetime, Mark | None]] = []
        lost: list[datetime] = []  # absolute-time wall times swallowed by the latest gap
        gap_end = last

        def noted(fire: datetime, mark: Mark | None) -> Mark | None:
            """The first fire after a gap that swallowed fires says so."""
            nonlocal lost
            if lost and fire >= gap_end:
                mark, lost = mark or _gap_mark(tuple(lost), gap_end, zone), []
            return mark

        for wall in walls:
            if wall - start > _HORIZON:
                break
            fires, low, _, lost_in_gap = self._place(wall, zone, absolute)
            if lost_in_gap is not None:
                if lost_in_gap != gap_end:  # a new gap
                    lost, gap_end = [], lost_in_gap
                lost.append(wall)
            for placed in fires:
                if placed[0] >= last:  # an equal instant: one fire, with both marks
                    bisect.insort(pending, placed, key=_instant)
            while pending and pending[0][0] <= low:
                fire, mark = pending.pop(0)
                if fire >= last and fire > moment:
                    last = fire
                    yield fire, noted(fire, mark)
        for fire, mark in pending:
            if fire >= last and fire > moment:
                last = fire
                yield fire, noted(fire, mark)

    def _backward(self, moment: datetime) -> Iterator[datetime]:
        """Fire times at or before ``moment``, descending, in UTC, back to the horizon."""
        zone, absolute = self.zone, self.follows_absolute_time
        local = moment.astimezone(zone)
        start = local.replace(tzinfo=None, fold=0)
        # In the second pass of a repeated hour, later wall times already had their
        # first instant: start the walk that much later on the wall clock.
        start += max(_ZERO, _offset(local.replace(fold=0)) - _offset(local))
        try:
            # A start with microseconds makes cronsim look at its whole second first.
            walls = CronSim(
                _for_cronsim(self.expression), start.replace(microsecond=1), reverse=True
            )
        except CronSimError:
            return
        last = moment.astimezone(UTC) + _SECOND  # anything later than every fire wanted
        limit = moment.astimezone(UTC)
        pending: list[datetime] = []
        for wall in walls:
            if start - wall > _HORIZON:
                break
            placed, _, high, _ = self._place(wall, zone, absolute)
            for fire, _ in placed:
                if fire <= limit and fire < last:
                    bisect.insort(pending, fire)
            while pending and pending[-1] >= high:
                fire = pending.pop()
                if fire < last:  # equal instants are one fire
                    last = fire
                    yield fire
        for fire in reversed(pending):
            if fire < last:
                last = fire
                yield fire


def _instant(fire: tuple[datetime, Mark | None]) -> datetime:
    return fire[0]


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
