"""tasks_app.cron: parsing and validation, and fire times in an IANA timezone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from tasks_app.cron import FIELD_NAMES, Cron, CronError, parse, validate_timezone

NY = "America/New_York"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- parse: shape -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "count"),
    [("", 0), ("*", 1), ("0 9 * *", 4), ("0 0 9 * * 1-5", 6), ("0 0 9 * * 1-5 2030", 7)],
)
def test_parse_requires_exactly_five_fields(expression: str, count: int) -> None:
    with pytest.raises(CronError) as caught:
        parse(expression)
    assert str(caught.value) == (
        f"must have exactly 5 fields (minute hour day month weekday), got {count}"
    )


@pytest.mark.parametrize("value", [None, 5, ["0", "9", "*", "*", "*"]])
def test_parse_refuses_non_strings(value: object) -> None:
    with pytest.raises(CronError, match=r"^must be a string of 5 fields"):
        parse(value)  # type: ignore[arg-type]


def test_parse_returns_normalised_cron_in_its_timezone() -> None:
    cron = parse("  0   9 *\t* 1-5 ", NY)
    assert cron == Cron("0 9 * * 1-5", NY)
    assert cron.zone == ZoneInfo(NY)


def test_parse_defaults_to_utc() -> None:
    assert parse("*/15 * * * *") == Cron("*/15 * * * *", "UTC")


@pytest.mark.parametrize(
    "expression",
    [
        "60 * * * *",
        "* 24 * * *",
        "* * 0 * *",
        "* * 32 * *",
        "* * * 13 *",
        "* * * 0 *",
        "* * * * 8",
        "*/0 * * * *",
        "a b c d e",
        "5-1 * * * *",
        "0 0 ? * *",
    ],
)
def test_parse_refuses_invalid_fields(expression: str) -> None:
    with pytest.raises(CronError, match=r"^is not a valid cron expression: .+"):
        parse(expression)


@pytest.mark.parametrize("expression", ["0 0 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6 *"])
def test_parse_refuses_days_that_never_occur(expression: str) -> None:
    with pytest.raises(CronError, match=r"^is not a valid cron expression: .*never occurs"):
        parse(expression)


def test_parse_accepts_leap_day() -> None:
    cron = parse("0 0 29 2 *")
    assert cron.next_after(utc(2025, 3, 1)) == utc(2028, 2, 29)


@pytest.mark.parametrize(
    "expression", ["0 0 L * *", "0 0 * * 5L", "0 0 * * 5#2", "0 0 LW * *", "0 0 15W * *"]
)
def test_parse_refuses_l_hash_and_w_extensions(expression: str) -> None:
    with pytest.raises(CronError, match=r"^is not a valid cron expression"):
        parse(expression)


# --- parse: weekday 7 -------------------------------------------------------------


@pytest.mark.parametrize(
    ("weekday", "normalised"),
    [
        ("7", "0"),
        ("0", "0"),
        ("5-7", "5-6,0"),
        ("6-7", "6,0"),
        ("1-5", "1-5"),
        ("1,7", "1,0"),
        ("0-7", "0-6,0"),
        ("mon-fri", "mon-fri"),
    ],
)
def test_weekday_seven_is_normalised_to_celery_range(weekday: str, normalised: str) -> None:
    cron = parse(f"0 9 * * {weekday}")
    assert cron.expression == f"0 9 * * {normalised}"
    assert cron.fields()["day_of_week"] == normalised


def test_weekday_seven_fires_on_sunday() -> None:
    cron = parse("0 9 * * 7")
    saturday = utc(2025, 1, 18, 12)
    fire = cron.next_after(saturday)
    assert fire == utc(2025, 1, 19, 9)
    assert fire.weekday() == 6  # Sunday


def test_range_ending_in_seven_fires_friday_to_sunday() -> None:
    cron = parse("0 9 * * 5-7")
    runs = cron.upcoming(utc(2025, 1, 13), 4)  # from Monday
    assert runs == [
        utc(2025, 1, 17, 9),
        utc(2025, 1, 18, 9),
        utc(2025, 1, 19, 9),
        utc(2025, 1, 24, 9),
    ]


# --- parse: timezone --------------------------------------------------------------


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "", "EST5EDT ", "new_york", None])
def test_parse_refuses_unknown_timezones(zone: object) -> None:
    with pytest.raises(CronError) as caught:
        parse("0 9 * * *", zone)  # type: ignore[arg-type]
    assert str(caught.value) == (
        f"{zone!r} is not an IANA timezone name (for example 'Europe/Paris' or 'UTC')"
    )


@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris", NY, "Asia/Kolkata"])
def test_validate_timezone_returns_known_names(zone: str) -> None:
    assert validate_timezone(zone) == zone


# --- fields -----------------------------------------------------------------------


def test_fields_maps_to_crontab_schedule_columns() -> None:
    assert parse("5 9-17 1,15 */2 1-7", NY).fields() == {
        "minute": "5",
        "hour": "9-17",
        "day_of_month": "1,15",
        "month_of_year": "*/2",
        "day_of_week": "1-6,0",
    }
    assert FIELD_NAMES == ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")


# --- next_after / latest_at_or_before / upcoming -------------------------------------


def test_weekday_morning_in_new_york_follows_daylight_saving() -> None:
    cron = parse("0 9 * * 1-5", NY)
    # Winter: EST is UTC-5.
    assert cron.next_after(utc(2025, 1, 15, 0, 0)) == utc(2025, 1, 15, 14, 0)
    # Summer: EDT is UTC-4.
    assert cron.next_after(utc(2025, 7, 15, 0, 0)) == utc(2025, 7, 15, 13, 0)


def test_next_after_is_strictly_after() -> None:
    cron = parse("0 9 * * 1-5", NY)
    fire = utc(2025, 1, 15, 14, 0)
    assert cron.next_after(fire) == utc(2025, 1, 16, 14, 0)
    assert cron.next_after(fire - timedelta(microseconds=1)) == fire


def test_next_after_skips_the_weekend() -> None:
    cron = parse("0 9 * * 1-5", NY)
    friday_after_fire = utc(2025, 1, 17, 15, 0)
    assert cron.next_after(friday_after_fire) == utc(2025, 1, 20, 14, 0)


def test_next_after_answers_in_utc_for_any_input_zone() -> None:
    cron = parse("0 9 * * *", NY)
    paris = datetime(2025, 1, 15, 12, 0, tzinfo=ZoneInfo("Europe/Paris"))  # 11:00 UTC
    fire = cron.next_after(paris)
    assert fire == utc(2025, 1, 15, 14, 0)
    assert fire.tzinfo is UTC


def test_latest_at_or_before_at_exactly_a_fire_time_returns_it() -> None:
    cron = parse("0 9 * * 1-5", NY)
    fire = utc(2025, 1, 15, 14, 0)
    assert cron.latest_at_or_before(fire) == fire
    assert cron.latest_at_or_before(fire).tzinfo is UTC
    assert cron.latest_at_or_before(fire + timedelta(seconds=59, microseconds=999999)) == fire
    assert cron.latest_at_or_before(fire - timedelta(microseconds=1)) == utc(2025, 1, 14, 14, 0)


def test_latest_at_or_before_on_monday_morning_is_friday() -> None:
    cron = parse("0 9 * * 1-5", NY)
    assert cron.latest_at_or_before(utc(2025, 1, 20, 13, 0)) == utc(2025, 1, 17, 14, 0)


def test_latest_at_or_before_every_minute() -> None:
    cron = parse("* * * * *")
    assert cron.latest_at_or_before(utc(2025, 1, 15, 10, 7, 42, 5)) == utc(2025, 1, 15, 10, 7)


def test_upcoming_lists_the_next_runs_in_order() -> None:
    cron = parse("0 9 * * 1-5", NY)
    assert cron.upcoming(utc(2025, 1, 16, 15, 0), 4) == [
        utc(2025, 1, 17, 14, 0),
        utc(2025, 1, 20, 14, 0),
        utc(2025, 1, 21, 14, 0),
        utc(2025, 1, 22, 14, 0),
    ]
    assert cron.upcoming(utc(2025, 1, 16, 15, 0), 0) == []


def test_upcoming_crosses_spring_forward_at_the_wall_clock_time() -> None:
    cron = parse("0 9 * * *", NY)
    assert cron.upcoming(utc(2025, 3, 8, 15, 0), 2) == [
        utc(2025, 3, 9, 13, 0),  # EDT from 2025-03-09 02:00 local
        utc(2025, 3, 10, 13, 0),
    ]


def test_every_half_hour_counts_real_time_across_fall_back() -> None:
    cron = parse("*/30 * * * *", NY)
    # 2025-11-02 01:00 EDT (05:00 UTC) .. 01:59 EST (06:59 UTC): the hour repeats,
    # and a wildcard-hour schedule keeps firing every 30 real minutes through it.
    assert cron.upcoming(utc(2025, 11, 2, 4, 45), 5) == [
        utc(2025, 11, 2, 5, 0),
        utc(2025, 11, 2, 5, 30),
        utc(2025, 11, 2, 6, 0),
        utc(2025, 11, 2, 6, 30),
        utc(2025, 11, 2, 7, 0),
    ]


# --- daylight-saving edge cases for a fixed wall-clock time ------------------------


def test_spring_forward_skipped_time_fires_once_that_day() -> None:
    cron = parse("30 2 * * *", NY)
    # 2025-03-09: 02:00 EST jumps to 03:00 EDT, so 02:30 does not exist that day.
    runs = cron.upcoming(utc(2025, 3, 8, 12, 0), 3)
    assert runs == [
        utc(2025, 3, 9, 7, 0),  # 03:00 EDT, right after the jump (as cron does)
        utc(2025, 3, 10, 6, 30),  # 02:30 EDT
        utc(2025, 3, 11, 6, 30),
    ]
    zone = ZoneInfo(NY)
    local_days = [run.astimezone(zone).date().isoformat() for run in runs]
    assert local_days == ["2025-03-09", "2025-03-10", "2025-03-11"]


def test_spring_forward_latest_matches_the_fire() -> None:
    cron = parse("30 2 * * *", NY)
    assert cron.latest_at_or_before(utc(2025, 3, 9, 7, 0)) == utc(2025, 3, 9, 7, 0)
    assert cron.latest_at_or_before(utc(2025, 3, 9, 12, 0)) == utc(2025, 3, 9, 7, 0)
    assert cron.latest_at_or_before(utc(2025, 3, 9, 6, 59, 59)) == utc(2025, 3, 8, 7, 30)


def test_fall_back_repeated_time_fires_once() -> None:
    cron = parse("30 1 * * *", NY)
    # 2025-11-02: 01:00-01:59 happens twice (EDT, then EST); cron fires at the first.
    assert cron.upcoming(utc(2025, 11, 1, 12, 0), 3) == [
        utc(2025, 11, 2, 5, 30),  # 01:30 EDT
        utc(2025, 11, 3, 6, 30),  # 01:30 EST
        utc(2025, 11, 4, 6, 30),
    ]


def test_fall_back_next_after_inside_the_repeated_hour_is_in_the_future() -> None:
    cron = parse("55 1 * * *", NY)
    # 06:50 UTC is 01:50 EST, the second pass; 01:55 EDT (05:55 UTC) is already past.
    moment = utc(2025, 11, 2, 6, 50)
    assert cron.next_after(moment) == utc(2025, 11, 3, 6, 55)
    assert cron.upcoming(moment, 2) == [utc(2025, 11, 3, 6, 55), utc(2025, 11, 4, 6, 55)]


def test_fall_back_latest_inside_the_repeated_hour_is_todays_fire() -> None:
    cron = parse("55 1 * * *", NY)
    # 06:10 UTC is 01:10 EST; today's 01:55 EDT fire (05:55 UTC) is the latest.
    assert cron.latest_at_or_before(utc(2025, 11, 2, 6, 10)) == utc(2025, 11, 2, 5, 55)
    assert cron.latest_at_or_before(utc(2025, 11, 2, 5, 54)) == utc(2025, 11, 1, 5, 55)


@pytest.mark.parametrize("expression", ["30 1 * * *", "55 1 * * *", "30 2 * * *", "0 9 * * 1-5"])
@pytest.mark.parametrize("start", [utc(2025, 3, 8), utc(2025, 10, 31)])
def test_upcoming_and_latest_agree_through_dst_changes(expression: str, start: datetime) -> None:
    """Every fire is strictly later than the previous one, and each is its own latest."""
    cron = parse(expression, NY)
    runs = cron.upcoming(start, 8)
    assert len(runs) == 8
    assert runs[0] > start
    assert all(a < b for a, b in zip(runs, runs[1:], strict=False))
    for previous, fire in zip([None, *runs], runs, strict=False):
        assert cron.latest_at_or_before(fire) == fire
        if previous is not None:
            assert cron.latest_at_or_before(fire - timedelta(seconds=1)) == previous
            assert cron.next_after(previous) == fire


def test_expressions_that_would_not_fit_the_beat_tables_are_refused() -> None:
    minutes = ",".join(str(i) for i in range(60))
    with pytest.raises(CronError, match="its minute field is longer than 240"):
        parse(f"{minutes},{minutes},{minutes} * * * *")
    with pytest.raises(CronError, match="is longer than 120 characters"):
        parse(f"{minutes} * * * *")
    weekdays = ",".join(["1-7"] * 11)  # 43 characters that expand to 76
    with pytest.raises(CronError, match="its day of week field is longer than 64"):
        parse(f"0 9 * * {weekdays}")
