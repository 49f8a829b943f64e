"""Cron schedules across daylight-saving changes (docs/when-does-my-task-run.md).

The expected instants here are computed independently of cronsim and of tasks_app.cron:
offset changes are found by scanning zoneinfo's UTC-to-local conversion, and a local
wall-clock time is placed on the time line by trying each of the zone's offsets.

Rules under test:

* wall-clock schedules (hour field without ``*`` or ``/``): each matching local time fires
  once - a skipped time at the first instant after the gap, a repeated time at the first
  of its two instants;
* absolute-time schedules (hour field with ``*`` or ``/``): every real instant whose
  local wall clock matches fires, so ``*/30 * * * *`` is every 1800 real seconds;
* fire times strictly increase.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

from tasks_app.cron import Cron, CronError, parse

ZONES = (
    "America/New_York",
    "Europe/London",
    "Australia/Sydney",
    "America/Santiago",
    "Asia/Kolkata",
    "Pacific/Chatham",
)
YEARS = range(2026, 2031)
NY = "America/New_York"
MINUTE = timedelta(minutes=1)
Change = tuple[datetime, timedelta, timedelta]  # (instant in UTC, offset before, after)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# --- an independent model of the zones ----------------------------------------------


def _offset_at(instant: datetime, zone: ZoneInfo) -> timedelta:
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None
    return offset


@cache
def transitions(
    zone_name: str, first_year: int = 2025, last_year: int = 2031
) -> tuple[Change, ...]:
    """Offset changes as (instant in UTC, offset before, offset after), found by scanning
    UTC in 3-hour steps and bisecting to the second."""
    zone = ZoneInfo(zone_name)
    found: list[Change] = []
    step = timedelta(hours=3)
    moment, end = utc(first_year, 1, 1), utc(last_year + 1, 1, 1)
    previous = _offset_at(moment, zone)
    while moment < end:
        following = moment + step
        offset = _offset_at(following, zone)
        if offset != previous:
            low, high = moment, following  # offset(low) == previous != offset(high)
            while high - low > timedelta(seconds=1):
                middle = low + timedelta(seconds=(high - low).total_seconds() // 2)
                if _offset_at(middle, zone) == previous:
                    low = middle
                else:
                    high = middle
            found.append((high, previous, offset))
            previous = offset
        moment = following
    return tuple(found)


def transitions_in(zone_name: str, years: range = YEARS) -> list[Change]:
    return [t for t in transitions(zone_name) if t[0].year in years]


def offsets(zone_name: str) -> set[timedelta]:
    zone = ZoneInfo(zone_name)
    found = {_offset_at(utc(2026, 1, 1), zone)}
    for _, before, after in transitions(zone_name):
        found |= {before, after}
    return found


def instants_of(wall: datetime, zone_name: str) -> list[datetime]:
    """Every real instant (UTC, ascending) at which the zone's clock shows ``wall``."""
    zone = ZoneInfo(zone_name)
    found = set()
    for offset in offsets(zone_name):
        candidate = (wall - offset).replace(tzinfo=UTC)
        if candidate.astimezone(zone).replace(tzinfo=None) == wall:
            found.add(candidate)
    return sorted(found)


def gap_containing(wall: datetime, zone_name: str) -> datetime | None:
    """The end of the skipped stretch that contains ``wall`` (None if it is not skipped)."""
    for instant, before, after in transitions(zone_name):
        start = instant.replace(tzinfo=None)
        if after > before and start + before <= wall < start + after:
            return instant
    return None


def expected_wall_clock_fire(wall: datetime, zone_name: str) -> datetime:
    """The one fire of a wall-clock schedule for local time ``wall`` (the rule)."""
    instants = instants_of(wall, zone_name)
    if instants:
        return instants[0]  # repeated: the first of the two
    gap_end = gap_containing(wall, zone_name)
    assert gap_end is not None
    return gap_end  # skipped: the first instant after the gap


def year_bounds(year: int, zone_name: str) -> tuple[datetime, datetime]:
    """The first instants of local ``year`` and ``year + 1`` (New Year is never skipped
    in these zones)."""
    first = instants_of(datetime(year, 1, 1), zone_name)[0]
    following = instants_of(datetime(year + 1, 1, 1), zone_name)[0]
    return first, following


# --- the zones really do change where the docs say ------------------------------------


def test_the_zones_have_the_transitions_the_tests_rely_on() -> None:
    for name in ZONES:
        changes = transitions_in(name)
        assert len(changes) == (0 if name == "Asia/Kolkata" else 10), name
        assert all(abs(after - before) == timedelta(hours=1) for _, before, after in changes)
    # New York, 2026: 02:00 EST -> 03:00 EDT on 8 March, 02:00 EDT -> 01:00 EST on 1 Nov.
    assert [t for t, _, _ in transitions_in(NY, range(2026, 2027))] == [
        utc(2026, 3, 8, 7),
        utc(2026, 11, 1, 6),
    ]
    # Chatham changes at 02:45 standard time (+12:45 <-> +13:45).
    chatham = ZoneInfo("Pacific/Chatham")
    for instant, before, after in transitions_in("Pacific/Chatham"):
        local = instant.astimezone(chatham)
        assert (local.hour, local.minute) == ((3, 45) if after > before else (2, 45))
    # Santiago changes at local midnight (24:00 -04 -> 01:00 -03; 24:00 -03 -> 23:00 -04).
    santiago = ZoneInfo("America/Santiago")
    for instant, before, after in transitions_in("America/Santiago"):
        local = instant.astimezone(santiago)
        assert (local.hour, local.minute) == ((1, 0) if after > before else (23, 0))


# --- 1. table tests: once per local day, 2026-2030 --------------------------------------

DAILY_CASES = [(zone, clock) for zone in ZONES for clock in ((2, 30), (1, 30))] + [
    (NY, (2, 0)),  # the first skipped minute itself
    (NY, (3, 0)),  # the first minute after the gap
    ("Pacific/Chatham", (2, 45)),  # skipped in September, repeated in April
    ("Pacific/Chatham", (3, 30)),
    ("America/Santiago", (0, 0)),  # skipped in September
    ("America/Santiago", (0, 30)),
    ("America/Santiago", (23, 30)),  # repeated in April
    ("Australia/Sydney", (2, 0)),
    ("Europe/London", (1, 0)),
]


@pytest.mark.parametrize(("zone", "clock"), DAILY_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("year", YEARS)
def test_daily_fixed_time_fires_once_every_local_day(
    zone: str, clock: tuple[int, int], year: int
) -> None:
    hour, minute = clock
    cron = parse(f"{minute} {hour} * * *", zone)
    first, following = year_bounds(year, zone)
    fires = cron.upcoming(first - timedelta(microseconds=1), 400, before=following)

    days = [date(year, 1, 1) + timedelta(days=i) for i in range((following - first).days + 1)]
    days = [day for day in days if day.year == year]
    expected = [
        expected_wall_clock_fire(datetime.combine(day, time(hour, minute)), zone) for day in days
    ]
    assert fires == expected
    local_zone = ZoneInfo(zone)
    assert [fire.astimezone(local_zone).date() for fire in fires] == days


def test_the_table_covers_skipped_and_repeated_times() -> None:
    """The cases above do meet both kinds of change, in every zone that has them."""
    skipped, repeated = set(), set()
    for zone, (hour, minute) in DAILY_CASES:
        for day in (date(2026, 1, 1) + timedelta(days=i) for i in range(365)):
            wall = datetime.combine(day, time(hour, minute))
            count = len(instants_of(wall, zone))
            if count == 0:
                skipped.add(zone)
            elif count == 2:
                repeated.add(zone)
    assert skipped == repeated == set(ZONES) - {"Asia/Kolkata"}


# --- 1. absolute-time schedules around every change -----------------------------------


def windows(zone: str) -> list[tuple[datetime, datetime]]:
    """Four days around every change of 2026-2030 (Kolkata has none: a plain week)."""
    changes = [t for t, _, _ in transitions_in(zone)]
    if not changes:
        changes = [utc(2026, 3, 8), utc(2030, 11, 3)]
    return [(t - timedelta(days=2), t + timedelta(days=2)) for t in changes]


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize(("expression", "period"), [("*/30 * * * *", 1800), ("0 * * * *", 3600)])
def test_wildcard_hours_follow_real_time_across_every_change(
    zone: str, expression: str, period: int
) -> None:
    cron = parse(expression, zone)
    local_zone = ZoneInfo(zone)
    for start, end in windows(zone):
        fires = cron.upcoming(start, 1000, before=end)
        assert fires[0] - start <= timedelta(seconds=period)
        assert end - fires[-1] <= timedelta(seconds=period)
        gaps = {(b - a).total_seconds() for a, b in zip(fires, fires[1:], strict=False)}
        assert gaps == {period}, (zone, start)
        for fire in fires:
            local = fire.astimezone(local_zone)
            assert local.minute % (period // 60) == 0 and local.second == 0


def test_hourly_where_the_change_is_half_an_hour() -> None:
    """Lord Howe moves its clock by 30 minutes: hourly at minute 0 then has one 90-minute
    interval on each change day (02:00 does not exist in October; in April 01:30-01:59
    repeats but 01:00 and 02:00 each happen once)."""
    cron = parse("0 * * * *", "Australia/Lord_Howe")
    for start, end in [
        (utc(2026, 10, 3, 12), utc(2026, 10, 4, 0)),
        (utc(2026, 4, 4, 12), utc(2026, 4, 5, 0)),
    ]:
        fires = cron.upcoming(start, 100, before=end)
        gaps = [(b - a).total_seconds() for a, b in zip(fires, fires[1:], strict=False)]
        assert sorted(set(gaps)) == [3600, 5400] and gaps.count(5400) == 1


# --- 1. New York worked examples (the ones in the docs) --------------------------------

SPRING, FALL = utc(2026, 3, 7, 12), utc(2026, 10, 31, 12)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        # 8 March 2026: 02:00 EST -> 03:00 EDT.
        ("30 2 * * *", SPRING, [utc(2026, 3, 8, 7, 0), utc(2026, 3, 9, 6, 30)]),
        ("30 1 * * *", SPRING, [utc(2026, 3, 8, 6, 30), utc(2026, 3, 9, 5, 30)]),
        ("0,30 2 * * *", SPRING, [utc(2026, 3, 8, 7, 0), utc(2026, 3, 9, 6, 0)]),
        ("0 2,3 * * *", SPRING, [utc(2026, 3, 8, 7, 0), utc(2026, 3, 9, 6, 0)]),
        ("*/30 2 * * *", SPRING, [utc(2026, 3, 8, 7, 0), utc(2026, 3, 9, 6, 0)]),
        ("30 0-23/2 * * *", utc(2026, 3, 8, 5), [utc(2026, 3, 8, 5, 30), utc(2026, 3, 8, 8, 30)]),
        # 1 November 2026: 02:00 EDT -> 01:00 EST.
        ("30 1 * * *", FALL, [utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]),
        ("30 2 * * *", FALL, [utc(2026, 11, 1, 7, 30), utc(2026, 11, 2, 7, 30)]),
        (
            "*/30 1 * * *",
            FALL,
            [utc(2026, 11, 1, 5, 0), utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 0)],
        ),
        (
            "30 1-23/2 * * *",
            utc(2026, 11, 1, 5),
            [utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 6, 30), utc(2026, 11, 1, 8, 30)],
        ),
    ],
)
def test_new_york_change_days(expression: str, after: datetime, expected: list[datetime]) -> None:
    assert parse(expression, NY).upcoming(after, len(expected)) == expected


def test_new_york_every_half_hour_on_both_change_days() -> None:
    cron = parse("*/30 * * * *", NY)
    assert cron.upcoming(utc(2026, 3, 8, 5, 45), 4) == [
        utc(2026, 3, 8, 6, 0),  # 01:00 EST
        utc(2026, 3, 8, 6, 30),  # 01:30 EST
        utc(2026, 3, 8, 7, 0),  # 03:00 EDT
        utc(2026, 3, 8, 7, 30),  # 03:30 EDT
    ]
    assert cron.upcoming(utc(2026, 11, 1, 4, 45), 5) == [
        utc(2026, 11, 1, 5, 0),  # 01:00 EDT
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT
        utc(2026, 11, 1, 6, 0),  # 01:00 EST
        utc(2026, 11, 1, 6, 30),  # 01:30 EST
        utc(2026, 11, 1, 7, 0),  # 02:00 EST
    ]


def test_latest_in_the_first_pass_of_the_repeated_hour_is_not_in_the_future() -> None:
    cron = parse("*/30 * * * *", NY)
    assert cron.latest_at_or_before(utc(2026, 11, 1, 5, 59)) == utc(2026, 11, 1, 5, 30)
    assert cron.latest_at_or_before(utc(2026, 11, 1, 6, 29)) == utc(2026, 11, 1, 6, 0)


def test_next_after_just_after_a_change_that_is_not_on_the_hour() -> None:
    chatham = ZoneInfo("Pacific/Chatham")
    cron = parse("0 */4 * * *", "Pacific/Chatham")
    moment = datetime(2026, 9, 27, 3, 50, tzinfo=chatham)  # just after 02:45 -> 03:45
    assert cron.next_after(moment) == datetime(2026, 9, 27, 4, 0, tzinfo=chatham)


# --- 2./3. properties over random crons ------------------------------------------------


def _field(low: int, high: int, favoured: list[int]) -> st.SearchStrategy[str]:
    number = st.one_of(st.sampled_from(favoured), st.integers(low, high))
    pair = st.tuples(number, number).map(sorted)
    single = number.map(str)
    span = pair.map(lambda ab: f"{ab[0]}-{ab[1]}")
    star_step = st.integers(2, max(2, (high - low + 1) // 2)).map(lambda k: f"*/{k}")
    span_step = st.tuples(pair, st.integers(2, 7)).map(lambda p: f"{p[0][0]}-{p[0][1]}/{p[1]}")
    item = st.one_of(single, span, span_step)
    listed = st.lists(item, min_size=2, max_size=3).map(",".join)
    return st.one_of(st.just("*"), single, span, star_step, span_step, listed)


MINUTES = _field(0, 59, [0, 15, 30, 45, 50])
HOURS = _field(0, 23, [0, 1, 2, 3, 23])
DAYS = st.one_of(st.just("*"), st.just("*"), _field(1, 28, [1, 7, 8, 14, 15]))
MONTHS = st.one_of(st.just("*"), st.just("*"), _field(1, 12, [3, 4, 9, 10, 11]))
WEEKDAYS = st.one_of(st.just("*"), st.just("*"), _field(0, 6, [0, 6]))
DAILY = st.tuples(st.sampled_from([0, 30, 45, 59]), st.sampled_from([0, 1, 2, 3, 23])).map(
    lambda mh: f"{mh[0]} {mh[1]} * * *"
)
EXPRESSIONS = st.one_of(DAILY, st.tuples(MINUTES, HOURS, DAYS, MONTHS, WEEKDAYS).map(" ".join))
PROPERTY_ZONES = st.sampled_from([*ZONES, "UTC"])


def expand(field: str, low: int, high: int) -> set[int]:
    """The values a cron field selects (numbers, a-b, */k, a-b/k, lists)."""
    values: set[int] = set()
    for part in field.split(","):
        spec, _, step = part.partition("/")
        if spec == "*":
            first, last = low, high
        elif "-" in spec:
            first, last = (int(x) for x in spec.split("-"))
        else:
            first = last = int(spec)
        values |= set(range(first, last + 1, int(step or 1)))
    return values


class Matcher:
    """Whether a local wall-clock time matches a cron expression (Vixie day rule: if the
    day-of-month or day-of-week field starts with ``*`` both must match, else either)."""

    def __init__(self, expression: str) -> None:
        minute, hour, dom, month, dow = expression.split()
        self.minutes, self.hours = expand(minute, 0, 59), expand(hour, 0, 23)
        self.doms, self.months = expand(dom, 1, 31), expand(month, 1, 12)
        self.dows = {d % 7 for d in expand(dow, 0, 7)}
        self.day_and = dom.startswith("*") or dow.startswith("*")
        self.absolute = "*" in hour or "/" in hour

    def __call__(self, wall: datetime) -> bool:
        if wall.second or wall.minute not in self.minutes or wall.hour not in self.hours:
            return False
        if wall.month not in self.months:
            return False
        dom, dow = wall.day in self.doms, (wall.weekday() + 1) % 7 in self.dows
        return (dom and dow) if self.day_and else (dom or dow)


def brute_force_fires(
    matcher: Matcher, zone: str, start: datetime, end: datetime
) -> list[datetime]:
    """Every fire in (start, end], minute by minute, straight from the rules."""
    local_zone = ZoneInfo(zone)
    fires: set[datetime] = set()
    moment = start.replace(second=0, microsecond=0) + MINUTE
    while moment <= end:
        wall = moment.astimezone(local_zone).replace(tzinfo=None)
        if matcher(wall) and (matcher.absolute or instants_of(wall, zone)[0] == moment):
            fires.add(moment)
        moment += MINUTE
    if not matcher.absolute:
        for instant, before, after in transitions(zone):
            if start < instant <= end and after > before:
                wall, gap_end = (
                    instant.replace(tzinfo=None) + before,
                    instant.replace(tzinfo=None) + after,
                )
                while wall < gap_end and not matcher(wall):
                    wall += MINUTE
                if wall < gap_end:
                    fires.add(instant)
    return sorted(fires)


def intended_day(fire: datetime, clock: time, zone: str) -> date:
    """The local day whose ``clock`` time a daily wall-clock schedule's ``fire`` is for:
    the fire's own day, or for a fire at the end of a gap the day the skipped time was on
    (in these six zones the same day; where a gap crosses midnight, as in America/Nuuk,
    the next day)."""
    local = fire.astimezone(ZoneInfo(zone)).replace(tzinfo=None)
    if local.time() == clock:
        return local.date()
    for day in (local.date() - timedelta(days=1), local.date()):
        if gap_containing(datetime.combine(day, clock), zone) == fire:
            return day
    raise AssertionError(f"{fire} is not a {clock} fire in {zone}")


@st.composite
def starts(draw: st.DrawFn, zone: str) -> datetime:
    """A random instant in 2026-2027, half the time within two days before a change."""
    changes = [t for t, _, _ in transitions_in(zone, range(2026, 2028))]
    near_a_change = draw(st.booleans())
    if changes and near_a_change:
        change = draw(st.sampled_from(changes))
        return change - timedelta(seconds=draw(st.integers(0, 2 * 86400)))
    seconds = draw(st.integers(0, 2 * 365 * 86400))
    return utc(2026, 1, 1) + timedelta(seconds=seconds, microseconds=draw(st.integers(0, 999)))


def _cron(expression: str, zone: str) -> Cron:
    try:
        return parse(expression, zone)
    except CronError:
        assume(False)
        raise


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(expression=EXPRESSIONS, zone=PROPERTY_ZONES, data=st.data())
def test_fire_times_follow_the_rules_for_random_crons(
    expression: str, zone: str, data: st.DataObject
) -> None:
    cron = _cron(expression, zone)
    matcher = Matcher(cron.expression)
    local_zone = ZoneInfo(zone)
    start = data.draw(starts(zone))
    note(f"cron {cron.expression!r} in {zone}, from {start.isoformat()}")
    end = start + timedelta(days=3 * 365)
    fires = cron.upcoming(start, 1200, before=end)

    assert all(a < b for a, b in zip([start, *fires], fires, strict=False))
    for fire in fires:
        assert fire.tzinfo is UTC and fire.second == fire.microsecond == 0
        wall = fire.astimezone(local_zone).replace(tzinfo=None)
        if matcher(wall):
            if not matcher.absolute:  # a repeated time fires at its first instant only
                assert instants_of(wall, zone)[0] == fire
        else:  # only a skipped time may fire at a non-matching wall time: after the gap
            assert not matcher.absolute
            assert fire in {t for t, before, after in transitions(zone) if after > before}

    # Nothing lost, nothing extra: the first two days against a minute-by-minute scan.
    window_end = start + timedelta(days=2)
    if len(fires) == 1200:
        window_end = min(window_end, fires[-1])
    window = [fire for fire in fires if fire <= window_end]
    assert window == brute_force_fires(matcher, zone, start, window_end)

    fields = cron.expression.split()
    if fields[2:] == ["*", "*", "*"] and not matcher.absolute and len(fires) < 1200:
        hours, minutes = expand(fields[1], 0, 23), expand(fields[0], 0, 59)
        if len(hours) == len(minutes) == 1:  # daily: every local day exactly once
            (hour,), (minute,) = hours, minutes
            days = [intended_day(fire, time(hour, minute), zone) for fire in fires]
            assert days == [days[0] + timedelta(days=i) for i in range(len(days))]
            assert len(days) >= 3 * 365 - 1


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(expression=EXPRESSIONS, zone=PROPERTY_ZONES, data=st.data())
def test_latest_at_or_before_agrees_with_next_after(
    expression: str, zone: str, data: st.DataObject
) -> None:
    cron = _cron(expression, zone)
    for _ in range(5):
        moment = data.draw(starts(zone)) + timedelta(days=1)
        note(f"cron {cron.expression!r} in {zone}, at {moment.isoformat()}")
        latest, following = cron.latest_at_or_before(moment), cron.next_after(moment)
        if latest is not None:
            assert latest <= moment
            assert cron.next_after(latest - timedelta(microseconds=1)) == latest
        if following is not None:
            assert following > moment
            assert cron.latest_at_or_before(following - timedelta(microseconds=1)) == latest
        if latest is not None and following is not None:
            # (Both searches stop five years out: rare schedules may find nothing.)
            assert cron.next_after(latest) == following
