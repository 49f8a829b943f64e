"""Dead-man's switch: an active recurring task whose occurrence has not started within its
grace is late (live in stats, health and the admin), and its owner hears about it once
per episode (real PostgreSQL, an aiosmtpd inbox, an HTTP receiver for the webhook)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from tasks_app.models import ExecutionStatus, ExecutionTrigger, ScheduledTask, TaskExecution
from tasks_app.services.definitions import task_create, task_pause
from tasks_app.services.lateness import tasks_check_late, tasks_late
from tests.api_clients import forced_client
from tests.http_receiver import Receiver
from tests.smtp_inbox import Inbox, smtp_fixture  # noqa: F401 - the smtp fixture

pytestmark = pytest.mark.django_db

MINUTE = timedelta(minutes=1)


@pytest.fixture
def owner(django_user_model: Any) -> Any:
    return django_user_model.objects.create(username="alice", email="alice@example.com")


@pytest.fixture
def other(django_user_model: Any) -> Any:
    return django_user_model.objects.create(username="bob", email="bob@example.com")


def minute_floor(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def per_minute(
    owner: Any, *, armed: datetime, name: str = "Heartbeat", **fields: Any
) -> ScheduledTask:
    """A per-minute task, last created/edited at ``armed``, whose beat stopped then: its
    ``next_run`` still names the first occurrence after ``armed``."""
    task = task_create(
        owner=owner,
        name=name,
        type="recurring",
        cron="* * * * *",
        action={"type": "webhook", "url": "https://api.example.com/ping"},
        **fields,
    )
    ScheduledTask.objects.filter(pk=task.pk).update(
        created_at=armed, updated_at=armed, next_run=minute_floor(armed) + MINUTE
    )
    task.refresh_from_db()
    return task


def execution(task: ScheduledTask, occurrence: datetime, status: str, **fields: Any) -> None:
    TaskExecution.objects.create(
        task=task,
        trigger=ExecutionTrigger.SCHEDULED,
        scheduled_for=occurrence,
        status=status,
        **fields,
    )


def late_ids(now: datetime, owner: Any = None) -> list[str]:
    return [str(entry.task.pk) for entry in tasks_late(now=now, owner=owner)]


# --- what is late ----------------------------------------------------------------------


def test_a_run_missing_for_six_minutes_is_late(owner: Any) -> None:
    now = timezone.now()
    task = per_minute(owner, armed=now - timedelta(hours=1))
    [late] = tasks_late(now=now)
    assert late.task.pk == task.pk
    assert late.occurrence == minute_floor(now - timedelta(seconds=300))
    assert late.late_by_seconds == int((now - late.occurrence).total_seconds()) >= 300


@pytest.mark.parametrize(
    ("status", "fields"),
    [
        (ExecutionStatus.SKIPPED, {"error": "skipped: a condition did not hold"}),
        (ExecutionStatus.RUNNING, {"started": True}),
        (ExecutionStatus.COMPLETED, {"started": True}),
        (ExecutionStatus.FAILED, {"started": True}),
        (ExecutionStatus.RETRYING, {"started": True}),
        (ExecutionStatus.QUEUED, {"held": True}),
    ],
)
def test_a_run_that_started_or_was_decided_is_not_late(
    owner: Any, status: str, fields: dict[str, Any]
) -> None:
    now = timezone.now()
    task = per_minute(owner, armed=now - timedelta(hours=1))
    occurrence = minute_floor(now - timedelta(seconds=300))
    if fields.pop("started", False):
        fields["started_at"] = occurrence + timedelta(seconds=1)
    execution(task, occurrence, status, **fields)
    assert late_ids(now) == []


def test_a_run_queued_and_never_started_is_late_even_with_beat_alive(owner: Any) -> None:
    now = timezone.now()
    task = per_minute(owner, armed=now - timedelta(hours=1))
    ScheduledTask.objects.filter(pk=task.pk).update(next_run=minute_floor(now) + MINUTE)
    occurrence = minute_floor(now - timedelta(seconds=300))
    execution(task, occurrence, ExecutionStatus.QUEUED)
    assert [(e.task.pk, e.occurrence) for e in tasks_late(now=now)] == [(task.pk, occurrence)]


def test_workers_down_is_late_although_later_runs_are_skipped_as_overlaps(owner: Any) -> None:
    """With workers down the first run stays queued and overlapPolicy skip skips every
    later one: the latest occurrence is "decided", yet the task is late since the first."""
    now = timezone.now()
    task = per_minute(owner, armed=now - timedelta(hours=1))
    ScheduledTask.objects.filter(pk=task.pk).update(next_run=minute_floor(now) + MINUTE)
    first = minute_floor(now) - timedelta(minutes=10)
    execution(task, first, ExecutionStatus.QUEUED)
    for minutes in range(1, 11):
        skipped = first + minutes * MINUTE
        execution(task, skipped, ExecutionStatus.SKIPPED, error="skipped: overlap")
    [late] = tasks_late(now=now)
    assert (late.task.pk, late.occurrence) == (task.pk, first)


def test_a_just_created_task_is_not_late_until_its_first_run_is(owner: Any) -> None:
    armed = minute_floor(timezone.now()) - timedelta(hours=1) + timedelta(seconds=1)
    per_minute(owner, armed=armed)
    first = minute_floor(armed) + MINUTE
    assert late_ids(armed) == []
    assert late_ids(first + timedelta(seconds=299)) == []
    assert len(late_ids(first + timedelta(seconds=301))) == 1


def test_created_now_through_the_service_is_not_late(owner: Any) -> None:
    task_create(
        owner=owner,
        name="fresh",
        type="recurring",
        cron="* * * * *",
        action={"type": "webhook", "url": "https://api.example.com/ping"},
    )
    assert late_ids(timezone.now()) == []


def test_paused_is_not_late(owner: Any) -> None:
    now = timezone.now()
    task = per_minute(owner, armed=now - timedelta(hours=1))
    assert len(late_ids(now)) == 1
    task_pause(task=task)
    assert late_ids(now) == []


def test_window_bounds_the_occurrence(owner: Any) -> None:
    now = timezone.now()
    per_minute(owner, armed=now - timedelta(hours=1), start_at=now + timedelta(hours=1))
    assert late_ids(now) == []


@pytest.mark.parametrize(
    ("fields", "not_yet", "late"),
    [
        ({}, 299, 301),
        ({"grace_seconds": 600}, 599, 601),
        ({"grace_seconds": 60}, 59, 61),
        ({"jitter_seconds": 120}, 419, 421),
        ({"grace_seconds": 30, "jitter_seconds": 30}, 59, 61),
    ],
)
def test_grace_and_jitter_are_respected(
    owner: Any, fields: dict[str, Any], not_yet: int, late: int
) -> None:
    armed = minute_floor(timezone.now()) - timedelta(hours=2) + timedelta(seconds=1)
    per_minute(owner, armed=armed, **fields)
    first = minute_floor(armed) + MINUTE
    assert late_ids(first + timedelta(seconds=not_yet)) == []
    assert len(late_ids(first + timedelta(seconds=late))) == 1


def test_the_default_grace_comes_from_settings(owner: Any, settings: Any) -> None:
    settings.SCHEDULER_LATE_AFTER_SECONDS = 900
    armed = minute_floor(timezone.now()) - timedelta(hours=2) + timedelta(seconds=1)
    per_minute(owner, armed=armed)
    first = minute_floor(armed) + MINUTE
    assert late_ids(first + timedelta(seconds=899)) == []
    assert len(late_ids(first + timedelta(seconds=901))) == 1


def test_owner_scope(owner: Any, other: Any) -> None:
    now = timezone.now()
    mine = per_minute(owner, armed=now - timedelta(hours=1))
    per_minute(other, armed=now - timedelta(hours=1))
    assert late_ids(now, owner) == [str(mine.pk)]
    assert len(late_ids(now)) == 2


# --- the check: late_since and one notice per episode ---------------------------------


def test_owner_is_notified_once_per_episode(smtp: Inbox, owner: Any) -> None:
    now = timezone.now()
    task = per_minute(owner, armed=now - timedelta(hours=1), name="Nightly  backup")
    first_late = minute_floor(now - timedelta(seconds=300))

    assert tasks_check_late(now=now) == 1
    task.refresh_from_db()
    assert task.late_since == first_late
    [envelope] = smtp.envelopes
    assert envelope.rcpt_tos == ["alice@example.com"]
    message = smtp.message()
    assert message["Subject"] == "[scheduler] Nightly backup is late"
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    body = payload.decode()
    assert first_late.isoformat() in body and f"/api/tasks/{task.pk}" in body

    assert tasks_check_late(now=now + MINUTE) == 0  # still late: no second notice
    assert len(smtp.envelopes) == 1
    task.refresh_from_db()
    assert task.late_since == first_late  # the episode's start

    # Beat and workers are back: the missed occurrences are skipped, the current one ran.
    later = now + 2 * MINUTE
    for minutes in range(1, 11):
        missed = minute_floor(later) - minutes * MINUTE
        execution(task, missed, ExecutionStatus.SKIPPED, error="skipped: missed (downtime)")
    execution(task, minute_floor(later), ExecutionStatus.COMPLETED, started_at=later)
    ScheduledTask.objects.filter(pk=task.pk).update(next_run=minute_floor(later) + MINUTE)
    assert late_ids(later) == []
    assert tasks_check_late(now=later) == 0
    task.refresh_from_db()
    assert task.late_since is None
    assert len(smtp.envelopes) == 1

    # Beat stops again: after the grace, a new episode and a new notice.
    assert tasks_check_late(now=later + 5 * MINUTE) == 0
    again = later + 7 * MINUTE
    assert tasks_check_late(now=again) == 1
    assert len(smtp.envelopes) == 2
    task.refresh_from_db()
    assert task.late_since == minute_floor(again - timedelta(seconds=300))


def test_check_clears_a_task_paused_while_late(smtp: Inbox, owner: Any) -> None:
    now = timezone.now()
    task = per_minute(owner, armed=now - timedelta(hours=1))
    assert tasks_check_late(now=now) == 1
    task_pause(task=task)
    assert tasks_check_late(now=now) == 0
    task.refresh_from_db()
    assert task.late_since is None and len(smtp.envelopes) == 1


def test_notice_goes_to_the_tasks_channels_too(
    smtp: Inbox, receiver: Receiver, egress_allow_loopback: None, owner: Any
) -> None:
    now = timezone.now()
    notification = {
        "onFailure": True,
        "channels": ["email", "webhook"],
        "email": ["ops@example.org"],
        "webhookUrl": f"{receiver.url}/hooks/late",
    }
    task = per_minute(owner, armed=now - timedelta(hours=1), notification=notification)
    assert tasks_check_late(now=now) == 1
    [envelope] = smtp.envelopes
    assert sorted(envelope.rcpt_tos) == ["alice@example.com", "ops@example.org"]
    [request] = receiver.received("/hooks/late")
    sent = request.json()
    assert sent["event"] == "task.late"
    assert sent["task"] == {"id": str(task.pk), "name": task.name}
    assert sent["occurrence"] == minute_floor(now - timedelta(seconds=300)).isoformat()
    assert sent["lateBySeconds"] >= 300


def test_a_failing_notice_is_logged_not_raised(smtp: Inbox, owner: Any, caplog: Any) -> None:
    smtp.fail_data = "554 5.0.0 no thanks"
    now = timezone.now()
    task = per_minute(owner, armed=now - timedelta(hours=1))
    assert tasks_check_late(now=now) == 1
    task.refresh_from_db()
    assert task.late_since is not None
    assert "late notice failed" in caplog.text
    assert tasks_check_late(now=now + MINUTE) == 0  # not retried: once per episode


# --- stats, health, admin --------------------------------------------------------------


def test_stats_show_my_late_tasks_only(owner: Any, other: Any) -> None:
    now = timezone.now()
    mine = per_minute(owner, armed=now - timedelta(hours=1), name="mine")
    task_pause(task=per_minute(owner, armed=now - timedelta(hours=1), name="paused"))
    per_minute(other, armed=now - timedelta(hours=1), name="theirs")
    stats = forced_client(owner).get("/api/stats").json()
    assert stats["late"] == 1
    [entry] = stats["lateTasks"]
    assert (entry["id"], entry["name"]) == (str(mine.pk), "mine")
    assert entry["lateBySeconds"] >= 300
    occurrence = datetime.fromisoformat(entry["occurrence"])
    assert occurrence <= timezone.now() - timedelta(seconds=300)
    assert occurrence >= minute_floor(now - timedelta(seconds=300))
    theirs = forced_client(other).get("/api/stats").json()
    assert theirs["late"] == 1 and theirs["lateTasks"][0]["name"] == "theirs"


def test_stats_late_is_zero_when_all_is_well(owner: Any) -> None:
    task_create(
        owner=owner,
        name="fresh",
        type="recurring",
        cron="* * * * *",
        action={"type": "webhook", "url": "https://api.example.com/ping"},
    )
    stats = forced_client(owner).get("/api/stats").json()
    assert (stats["late"], stats["lateTasks"]) == (0, [])


def test_health_counts_late_tasks_without_naming_them(client: Any, owner: Any, other: Any) -> None:
    now = timezone.now()
    per_minute(owner, armed=now - timedelta(hours=1), name="secret-project-a")
    per_minute(other, armed=now - timedelta(hours=1), name="secret-project-b")
    response = client.get("/api/health")
    assert response.status_code == 200  # lateness does not change the status
    body = response.json()
    assert body["status"] == "ok" and body["lateTasks"] == 2
    assert b"secret-project" not in response.content


def test_admin_shows_and_filters_late_tasks(
    client: Any, owner: Any, django_user_model: Any
) -> None:
    operator = django_user_model.objects.create_superuser(username="ops", email="", password=None)
    client.force_login(operator)
    now = timezone.now()
    per_minute(owner, armed=now - timedelta(hours=1), name="stalled-task")
    task_create(
        owner=owner,
        name="healthy-task",
        type="recurring",
        cron="* * * * *",
        action={"type": "webhook", "url": "https://api.example.com/ping"},
    )
    page = client.get("/admin/tasks_app/scheduledtask/").content.decode()
    assert "late since" in page and "stalled-task" in page and "healthy-task" in page
    assert re.search(r"late since \d{4}-\d\d-\d\d \d\d:\d\d UTC", page)
    late = client.get("/admin/tasks_app/scheduledtask/?late=yes").content.decode()
    assert "stalled-task" in late and "healthy-task" not in late
    fine = client.get("/admin/tasks_app/scheduledtask/?late=no").content.decode()
    assert "healthy-task" in fine and "stalled-task" not in fine
