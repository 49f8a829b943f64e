"""Previews that tell the truth (docs/when-does-my-task-run.md, "What the preview tells
you"): each occurrence a daylight-saving change moves, merges or repeats is marked, the
task's startAt/endAt window bounds the list, jitter is mentioned, and a saved task whose
recent runs outlast its interval gets a warning naming what its overlapPolicy will do."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from rest_framework.test import APIClient

from tasks_app.cron import Cron, Mark
from tasks_app.models import ScheduledTask, TaskExecution
from tasks_app.services import definitions
from tests.api_clients import client_for

NY = "America/New_York"
ACTION = {"type": "webhook", "url": "https://api.example.com/notify", "method": "POST"}


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def marked(expression: str, zone: str, after: datetime, count: int) -> list[tuple[str, Any]]:
    """(local ISO time, mark or None) for the next ``count`` fires, checking on the way that
    the marked walk gives exactly ``upcoming``'s fires."""
    cron = Cron(expression, zone)
    fires = cron.upcoming_marked(after, count)
    assert [fire for fire, _ in fires] == cron.upcoming(after, count)
    return [(fire.astimezone(ZoneInfo(zone)).isoformat(), mark) for fire, mark in fires]


def kinds(fires: list[tuple[str, Mark | None]]) -> list[tuple[str, str | None]]:
    return [(at, mark.kind if mark else None) for at, mark in fires]


# --- the marks, straight from tasks_app.cron --------------------------------------------


def test_spring_forward_wall_clock_time_is_shifted_to_the_end_of_the_gap() -> None:
    fires = marked("30 2 * * *", NY, utc(2026, 3, 7), 3)
    assert kinds(fires) == [
        ("2026-03-07T02:30:00-05:00", None),
        ("2026-03-08T03:00:00-04:00", "shifted"),
        ("2026-03-09T02:30:00-04:00", None),
    ]
    mark = fires[1][1]
    assert mark is not None
    assert mark.note == "02:30 does not exist on 2026-03-08 in America/New_York; runs at 03:00"


def test_several_skipped_times_on_one_instant_are_one_shifted_fire() -> None:
    fires = marked("0,30 2 * * *", NY, utc(2026, 3, 8), 2)
    assert kinds(fires) == [
        ("2026-03-08T03:00:00-04:00", "shifted"),
        ("2026-03-09T02:00:00-04:00", None),
    ]
    mark = fires[0][1]
    assert mark is not None and mark.note == (
        "02:00 and 02:30 do not exist on 2026-03-08 in America/New_York; runs once, at 03:00"
    )


def test_fall_back_wall_clock_time_is_merged_into_its_first_instant() -> None:
    fires = marked("30 1 * * *", NY, utc(2026, 10, 31), 3)
    assert kinds(fires) == [
        ("2026-10-31T01:30:00-04:00", None),
        ("2026-11-01T01:30:00-04:00", "merged"),
        ("2026-11-02T01:30:00-05:00", None),
    ]
    mark = fires[1][1]
    assert mark is not None
    assert "01:30 happens twice on 2026-11-01 in America/New_York" in mark.note
    assert "runs once, at the first 01:30 (UTC-04:00)" in mark.note


def test_absolute_time_schedule_repeats_in_the_fall_back_hour() -> None:
    fires = marked("*/30 * * * *", NY, utc(2026, 11, 1, 4, 15), 6)
    assert kinds(fires) == [
        ("2026-11-01T00:30:00-04:00", None),
        ("2026-11-01T01:00:00-04:00", "repeated"),
        ("2026-11-01T01:30:00-04:00", "repeated"),
        ("2026-11-01T01:00:00-05:00", "repeated"),
        ("2026-11-01T01:30:00-05:00", "repeated"),
        ("2026-11-01T02:00:00-05:00", None),
    ]
    first, second = fires[2][1], fires[4][1]
    assert first is not None and "the first 01:30 (UTC-04:00)" in first.note
    assert second is not None and "the second 01:30 (UTC-05:00)" in second.note


def test_absolute_time_schedule_marks_the_first_fire_after_a_gap() -> None:
    fires = marked("*/30 * * * *", NY, utc(2026, 3, 8, 5, 45), 4)
    assert kinds(fires) == [
        ("2026-03-08T01:00:00-05:00", None),
        ("2026-03-08T01:30:00-05:00", None),
        ("2026-03-08T03:00:00-04:00", "gap"),
        ("2026-03-08T03:30:00-04:00", None),
    ]
    mark = fires[2][1]
    assert mark is not None and mark.note == (
        "no runs between 02:00 and 03:00 on 2026-03-08 in America/New_York: the clocks skip "
        "that stretch, so 02:00 and 02:30 did not happen"
    )


def test_chatham_shift_of_an_hour_at_a_quarter_to() -> None:
    # Pacific/Chatham: 02:45 (+12:45) jumps to 03:45 (+13:45) on 2026-09-27.
    fires = marked("0 3 * * *", "Pacific/Chatham", utc(2026, 9, 25), 3)
    assert kinds(fires) == [
        ("2026-09-26T03:00:00+12:45", None),
        ("2026-09-27T03:45:00+13:45", "shifted"),
        ("2026-09-28T03:00:00+13:45", None),
    ]


def test_lord_howe_half_hour_changes() -> None:
    # Australia/Lord_Howe moves its clock by 30 minutes: 02:00 -> 02:30 in October,
    # 02:00 -> 01:30 in April.
    spring = marked("*/30 * * * *", "Australia/Lord_Howe", utc(2026, 10, 3, 14), 4)
    assert kinds(spring) == [
        ("2026-10-04T01:00:00+10:30", None),
        ("2026-10-04T01:30:00+10:30", None),
        ("2026-10-04T02:30:00+11:00", "gap"),
        ("2026-10-04T03:00:00+11:00", None),
    ]
    gap = spring[2][1]
    assert gap is not None and "between 02:00 and 02:30" in gap.note
    assert "02:00 did not happen" in gap.note
    autumn = marked("*/30 * * * *", "Australia/Lord_Howe", utc(2026, 4, 4, 13), 5)
    assert kinds(autumn) == [
        ("2026-04-05T00:30:00+11:00", None),
        ("2026-04-05T01:00:00+11:00", None),
        ("2026-04-05T01:30:00+11:00", "repeated"),
        ("2026-04-05T01:30:00+10:30", "repeated"),
        ("2026-04-05T02:00:00+10:30", None),
    ]
    daily = marked("15 2 * * *", "Australia/Lord_Howe", utc(2026, 10, 2, 12), 2)
    assert kinds(daily) == [
        ("2026-10-03T02:15:00+10:30", None),
        ("2026-10-04T02:30:00+11:00", "shifted"),
    ]


@pytest.mark.parametrize(
    "expression, zone",
    [
        ("0 9 * * *", NY),
        ("30 2 * * 1-5", NY),
        ("0 12 * * *", "Australia/Lord_Howe"),
        ("*/15 * * * *", "Asia/Kolkata"),
        ("0 0 1 * *", "Pacific/Chatham"),
    ],
)
def test_no_marks_on_ordinary_days(expression: str, zone: str) -> None:
    """A whole year of times that no change touches has no mark at all."""
    fires = marked(expression, zone, utc(2026, 1, 1), 400)  # 30 2 * * 1-5: 8 March is a Sunday
    assert [at for at, mark in fires if mark is not None] == []


@pytest.mark.parametrize(
    "expression, zone",
    [
        ("30 2 * * *", NY),
        ("0,30 1,2 * * *", NY),
        ("*/20 * * * *", NY),
        ("0 */2 * * *", "Europe/London"),
        ("45 2 * * *", "Pacific/Chatham"),
        ("*/30 * * * *", "Australia/Lord_Howe"),
        ("0 0 * * *", "America/Santiago"),
        ("30 23 * * *", "America/Nuuk"),
    ],
)
def test_marked_fires_are_the_fires(expression: str, zone: str) -> None:
    """One source of truth: across a year of changes the marked walk lists exactly the
    fires of ``upcoming``, and only change days carry marks."""
    cron = Cron(expression, zone)
    fires = cron.upcoming_marked(utc(2026, 1, 1), 20_000, before=utc(2027, 1, 1))
    assert [fire for fire, _ in fires] == cron.upcoming(
        utc(2026, 1, 1), 20_000, before=utc(2027, 1, 1)
    )
    tz = ZoneInfo(zone)
    for fire, mark in fires:
        if mark is None:
            continue
        day = fire.astimezone(tz)
        offsets = {
            (day.replace(hour=0, minute=0) + timedelta(hours=h)).utcoffset() for h in (-24, 48)
        }
        assert len(offsets) == 2, (fire, mark)  # the offset changes within a day of it


# --- through the API ---------------------------------------------------------------------


@pytest.fixture
def api(django_user_model: Any) -> APIClient:
    return client_for(django_user_model, "previewer")


def preview(api: APIClient, schedule: dict[str, Any], count: int, start: str) -> Any:
    response = api.post(
        "/api/schedules/preview",
        {"schedule": schedule, "count": count, "from": start},
        format="json",
    )
    assert response.status_code == 200, response.json()
    return response.json()


@pytest.mark.django_db
def test_schedule_preview_marks_occurrences_and_keeps_runs(api: APIClient) -> None:
    body = preview(api, {"cron": "30 2 * * *", "timezone": NY}, 3, "2026-03-07T00:00:00Z")
    assert body["description"] == "At 02:30 AM (America/New_York)"
    assert body["runs"] == [
        "2026-03-07T02:30:00-05:00",
        "2026-03-08T03:00:00-04:00",
        "2026-03-09T02:30:00-04:00",
    ]
    assert body["occurrences"] == [
        {"at": "2026-03-07T02:30:00-05:00"},
        {
            "at": "2026-03-08T03:00:00-04:00",
            "dst": {
                "kind": "shifted",
                "note": "02:30 does not exist on 2026-03-08 in America/New_York; runs at 03:00",
            },
        },
        {"at": "2026-03-09T02:30:00-04:00"},
    ]
    assert body["notes"] == [] and body["warnings"] == []


@pytest.mark.django_db
def test_schedule_preview_marks_merged_repeated_and_gap(api: APIClient) -> None:
    merged = preview(api, {"cron": "30 1 * * *", "timezone": NY}, 2, "2026-11-01T00:00:00Z")
    assert [o.get("dst", {}).get("kind") for o in merged["occurrences"]] == ["merged", None]
    fall = preview(api, {"cron": "*/30 * * * *", "timezone": NY}, 6, "2026-11-01T04:15:00Z")
    assert [o.get("dst", {}).get("kind") for o in fall["occurrences"]] == [
        None,
        *["repeated"] * 4,
        None,
    ]
    spring = preview(api, {"cron": "*/30 * * * *", "timezone": NY}, 3, "2026-03-08T06:15:00Z")
    assert spring["runs"] == [
        "2026-03-08T01:30:00-05:00",
        "2026-03-08T03:00:00-04:00",
        "2026-03-08T03:30:00-04:00",
    ]
    assert [o.get("dst", {}).get("kind") for o in spring["occurrences"]] == [None, "gap", None]


@pytest.mark.django_db
def test_schedule_preview_honours_the_window_and_mentions_jitter(api: APIClient) -> None:
    schedule = {
        "cron": "0 9 * * *",
        "timezone": NY,
        "startAt": "2026-12-03T09:00:00-05:00",
        "endAt": "2026-12-05T12:00:00",  # naive: read in the schedule's timezone
        "jitterSeconds": 120,
    }
    body = preview(api, schedule, 10, "2026-12-01T00:00:00Z")
    assert body["runs"] == [  # startAt itself may run; nothing after endAt
        "2026-12-03T09:00:00-05:00",
        "2026-12-04T09:00:00-05:00",
        "2026-12-05T09:00:00-05:00",
    ]
    notes = " | ".join(body["notes"])
    assert "no runs before 2026-12-03T09:00:00-05:00 (startAt)" in notes
    assert "no runs after 2026-12-05T12:00:00-05:00 (endAt)" in notes
    assert "up to 120 s after its time" in notes
    bad = api.post(
        "/api/schedules/preview",
        {"schedule": {**schedule, "endAt": "2026-12-01T00:00:00Z"}},
        format="json",
    )
    assert bad.status_code == 400 and "schedule.endAt" in bad.json()
    too_much = api.post(
        "/api/schedules/preview",
        {"schedule": {"cron": "0 9 * * *", "jitterSeconds": 10**6}},
        format="json",
    )
    assert too_much.status_code == 400 and "schedule.jitterSeconds" in too_much.json()


def make_task(api: APIClient, django_user_model: Any, **fields: Any) -> ScheduledTask:
    owner = django_user_model.objects.get(username="previewer")
    fields = {"name": "t", "timezone": NY, **fields}
    return definitions.task_create(owner=owner, type="recurring", action=ACTION, **fields)


@pytest.mark.django_db
def test_task_preview_marks_dst_inside_its_window(api: APIClient, django_user_model: Any) -> None:
    # startAt in the future makes the preview start there: the 2030 changes, any year.
    task = make_task(
        api,
        django_user_model,
        cron="30 2 * * *",
        start_at=datetime(2030, 3, 9, tzinfo=ZoneInfo(NY)),
        end_at=datetime(2030, 3, 11, 23, tzinfo=ZoneInfo(NY)),
        jitter_seconds=30,
    )
    body = api.get(f"/api/tasks/{task.pk}/preview?count=10").json()
    assert body["runs"] == [
        "2030-03-09T02:30:00-05:00",
        "2030-03-10T03:00:00-04:00",
        "2030-03-11T02:30:00-04:00",
    ]
    assert body["occurrences"][1]["dst"] == {
        "kind": "shifted",
        "note": "02:30 does not exist on 2030-03-10 in America/New_York; runs at 03:00",
    }
    assert "dst" not in body["occurrences"][0] and "dst" not in body["occurrences"][2]
    assert any("(startAt)" in note for note in body["notes"])
    assert any("(endAt)" in note for note in body["notes"])
    assert any("up to 30 s" in note for note in body["notes"])
    assert body["warnings"] == []


@pytest.mark.django_db
def test_task_preview_merged_in_the_fall(api: APIClient, django_user_model: Any) -> None:
    task = make_task(
        api, django_user_model, cron="30 1 * * *", start_at=datetime(2030, 11, 2, tzinfo=UTC)
    )
    body = api.get(f"/api/tasks/{task.pk}/preview?count=2").json()
    assert body["runs"] == ["2030-11-02T01:30:00-04:00", "2030-11-03T01:30:00-04:00"]
    assert [o.get("dst", {}).get("kind") for o in body["occurrences"]] == [None, "merged"]


def _ran(task: ScheduledTask, *durations: int, status: str = "completed") -> None:
    for ms in durations:
        TaskExecution.objects.create(
            task=task, trigger="manual", status=status, duration_ms=ms, attempt=1
        )


@pytest.mark.django_db
@pytest.mark.parametrize(
    "policy, says",
    [
        ("skip", "some runs will be skipped"),
        ("queue", "runs will queue one behind another"),
        ("allow", "runs will overlap"),
    ],
)
def test_overlap_warning_names_what_the_policy_does(
    api: APIClient, django_user_model: Any, policy: str, says: str
) -> None:
    task = make_task(api, django_user_model, cron="*/5 * * * *", overlap_policy=policy)
    _ran(task, 60_000, 420_000)  # one run of 7 minutes against a 5-minute interval
    _ran(task, 400_000, status="failed")
    warnings = api.get(f"/api/tasks/{task.pk}/preview?count=3").json()["warnings"]
    assert len(warnings) == 1, warnings
    assert says in warnings[0]
    assert "2 of the last 3 runs took longer (up to 7 min)" in warnings[0]
    assert "(5 min after" in warnings[0]


@pytest.mark.django_db
def test_no_overlap_warning_when_runs_fit(api: APIClient, django_user_model: Any) -> None:
    task = make_task(api, django_user_model, cron="*/5 * * * *")
    _ran(task, 60_000, 290_000)
    _ran(task, 900_000, status="skipped")  # not a finished run: not counted
    _ran(task, 900_000, status="running")
    assert api.get(f"/api/tasks/{task.pk}/preview").json()["warnings"] == []
    hourly = make_task(api, django_user_model, cron="0 * * * *", name="hourly")
    _ran(hourly, 420_000)
    assert api.get(f"/api/tasks/{hourly.pk}/preview").json()["warnings"] == []


@pytest.mark.django_db
def test_jitter_eats_into_the_interval(api: APIClient, django_user_model: Any) -> None:
    task = make_task(api, django_user_model, cron="*/5 * * * *", jitter_seconds=60)
    _ran(task, 270_000)  # 4.5 min: fits in 5 min, not in 5 min less a minute of jitter
    warnings = api.get(f"/api/tasks/{task.pk}/preview").json()["warnings"]
    assert len(warnings) == 1 and "less 60 s of jitter" in warnings[0]


@pytest.mark.django_db
def test_preview_shape_is_in_the_openapi_schema(api: APIClient) -> None:
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    for path, verb in (("/api/schedules/preview", "post"), ("/api/tasks/{id}/preview", "get")):
        answer = schema["paths"][path][verb]["responses"]["200"]["content"]["application/json"]
        properties = answer["schema"]["properties"]
        assert {"description", "runs", "occurrences", "notes", "warnings"} <= set(properties)
        dst = properties["occurrences"]["items"]["properties"]["dst"]
        assert dst["properties"]["kind"]["enum"] == ["shifted", "merged", "repeated", "gap"]
