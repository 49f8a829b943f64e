"""services.occurrences: each fire decided by the task's misfire, overlap, jitter and window
settings, every occurrence not run written down as skipped with its reason.

Times are passed explicitly (``now``) so a 10-minute outage is a fact of the test, not a
wait; the real-process version is tests/integration/test_time_semantics.py."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import close_old_connections, connection
from django.db.models import F
from django.utils import timezone

from tasks_app.models import ExecutionStatus, ScheduledTask, TaskExecution, TaskStatus
from tasks_app.services import executions, occurrences, recovery
from tasks_app.services.definitions import task_pause, task_resume
from tests.broker import published

pytestmark = pytest.mark.django_db

T0 = datetime(2031, 3, 4, 12, 0, tzinfo=UTC)  # a Tuesday, no DST anywhere near
MINUTE = timedelta(minutes=1)


def make_task(owner: Any, *, created: datetime = T0 - timedelta(days=1), **fields: Any) -> Any:
    fields.setdefault("type", "recurring")
    if fields["type"] == "recurring":
        fields.setdefault("cron", "* * * * *")
    task = ScheduledTask.objects.create(
        owner=owner,
        name="t",
        action={"type": "webhook", "url": "https://example.com/hook"},
        **fields,
    )
    ScheduledTask.objects.filter(pk=task.pk).update(created_at=created)
    task.refresh_from_db()
    return task


def ledger(task: ScheduledTask) -> list[TaskExecution]:
    # (A manual run has no scheduled_for: last, on SQLite as on PostgreSQL.)
    order = F("scheduled_for").asc(nulls_last=True)
    return list(TaskExecution.objects.filter(task=task).order_by(order, "queued_at"))


def fire(task: ScheduledTask, occurrence: datetime, since: datetime | None, now: datetime) -> Any:
    return occurrences.occurrence_fire(task_id=task.pk, occurrence=occurrence, since=since, now=now)


def finish(execution: TaskExecution, status: str = ExecutionStatus.COMPLETED) -> None:
    """What the worker does at the end of a run (release included); the messages it
    sends after commit are sent."""
    from django.db import transaction
    from django.test import TestCase

    with TestCase.captureOnCommitCallbacks(execute=True), transaction.atomic():
        execution.refresh_from_db()
        executions._finish(execution, status=status, now=timezone.now())


# --- misfire policy -------------------------------------------------------------------


def test_on_time_fire_runs_once_and_records_nothing_else(user: Any) -> None:
    task = make_task(user)
    [run] = fire(task, T0, since=T0 - MINUTE, now=T0 + timedelta(seconds=1))
    [execution] = ledger(task)
    assert (execution.scheduled_for, execution.status) == (T0, "queued")
    assert run.execution_id == str(execution.pk) and run.countdown == 0
    assert execution.enqueued_at is not None


def test_run_once_after_ten_minutes_down_runs_the_latest_and_records_ten_skipped(
    user: Any,
) -> None:
    task = make_task(user)  # misfirePolicy defaults to runOnce
    # Last fire at T0; beat and worker stopped at T0+30s, back 10 minutes later.
    back = T0 + timedelta(minutes=10, seconds=30)
    runs = fire(task, T0 + 10 * MINUTE, since=T0, now=back)
    rows = ledger(task)
    assert [row.scheduled_for for row in rows] == [T0 + i * MINUTE for i in range(1, 11)]
    skipped = [row for row in rows if row.status == "skipped"]
    assert len(skipped) == 9 and rows[-1].status == "queued"
    assert [run.execution_id for run in runs] == [str(rows[-1].pk)]
    assert all(row.error.startswith("skipped: missed (downtime)") for row in skipped)
    assert "runOnce runs only the latest" in skipped[0].error
    assert all(row.completed_at is not None for row in skipped)


def test_run_once_runs_the_latest_even_when_it_is_late(user: Any) -> None:
    task = make_task(user, cron="0 * * * *")
    runs = fire(task, T0, since=T0 - 3 * timedelta(hours=1), now=T0 + timedelta(minutes=20))
    rows = ledger(task)
    assert [row.status for row in rows] == ["skipped", "skipped", "queued"]
    assert len(runs) == 1
    assert "ran 20 min late (downtime)" in rows[-1].logs[0]["message"]


def test_skip_runs_no_missed_occurrence(user: Any) -> None:
    task = make_task(user, cron="0 * * * *", misfire_policy="skip")
    runs = fire(task, T0, since=T0 - 3 * timedelta(hours=1), now=T0 + timedelta(minutes=20))
    assert runs == []
    rows = ledger(task)
    assert [row.status for row in rows] == ["skipped"] * 3
    assert "misfirePolicy skip runs no missed occurrence" in rows[-1].error


def test_skip_still_runs_an_occurrence_within_the_misfire_grace(user: Any, settings: Any) -> None:
    settings.SCHEDULER_MISFIRE_GRACE_SECONDS = 60
    task = make_task(user, misfire_policy="skip")
    assert len(fire(task, T0, since=T0 - MINUTE, now=T0 + timedelta(seconds=59))) == 1


def test_run_all_runs_every_missed_occurrence_one_after_another(
    user: Any, memory_broker: Any
) -> None:
    task = make_task(user, misfire_policy="runAll")
    runs = fire(task, T0 + 5 * MINUTE, since=T0, now=T0 + timedelta(minutes=5, seconds=10))
    rows = ledger(task)
    assert len(rows) == 5 and len(runs) == 1
    assert runs[0].execution_id == str(rows[0].pk)  # the oldest goes first
    assert [row.held for row in rows] == [False, True, True, True, True]
    # Each finished run releases the next one, in order.
    for index in range(4):
        finish(rows[index])
        released = TaskExecution.objects.get(pk=rows[index + 1].pk)
        assert not released.held and released.enqueued_at is not None
    sent = [kwargs["execution_id"] for _name, kwargs in published(memory_broker)]
    assert sent == [str(row.pk) for row in rows[1:]]


def test_run_all_with_allow_sends_them_all_at_once(user: Any) -> None:
    task = make_task(user, misfire_policy="runAll", overlap_policy="allow")
    runs = fire(task, T0 + 5 * MINUTE, since=T0, now=T0 + timedelta(minutes=5, seconds=10))
    assert len(runs) == 5 and not any(row.held for row in ledger(task))


def test_run_all_skips_what_lies_outside_the_catch_up_window(user: Any) -> None:
    task = make_task(user, misfire_policy="runAll", catchup_window_seconds=180)
    fire(task, T0 + 10 * MINUTE, since=T0, now=T0 + 10 * MINUTE)
    rows = ledger(task)
    outside = [row for row in rows if row.status == "skipped"]
    assert [row.scheduled_for for row in outside] == [T0 + i * MINUTE for i in range(1, 7)]
    assert "outside the catch-up window of 180s" in outside[0].error
    assert len([row for row in rows if row.status == "queued"]) == 4


def test_run_all_is_capped(user: Any, settings: Any) -> None:
    settings.SCHEDULER_CATCHUP_MAX_RUNS = 3
    task = make_task(user, misfire_policy="runAll", overlap_policy="allow")
    runs = fire(task, T0 + 10 * MINUTE, since=T0, now=T0 + 10 * MINUTE)
    assert len(runs) == 3
    assert [row.status for row in ledger(task)].count("skipped") == 7


def test_a_long_outage_records_at_most_max_missed(user: Any, settings: Any) -> None:
    settings.SCHEDULER_MAX_MISSED = 50
    task = make_task(user, created=T0 - timedelta(days=30))
    fire(task, T0, since=T0 - timedelta(days=7), now=T0 + timedelta(seconds=5))
    rows = ledger(task)
    assert len(rows) == 51  # 50 missed + the latest
    assert rows[0].scheduled_for == T0 - 50 * MINUTE
    assert "not recorded one by one" in rows[0].logs[0]["message"]


def test_nothing_before_the_task_existed_is_owed(user: Any) -> None:
    task = make_task(user, created=T0 - timedelta(minutes=2, seconds=30))
    fire(task, T0, since=T0 - timedelta(hours=1), now=T0)
    assert [row.scheduled_for for row in ledger(task)] == [T0 - 2 * MINUTE, T0 - MINUTE, T0]


# --- exactly one execution per occurrence ---------------------------------------------


def test_a_second_fire_and_a_clock_stepping_back_record_nothing_new(user: Any) -> None:
    task = make_task(user)
    assert len(fire(task, T0, since=T0 - MINUTE, now=T0)) == 1
    assert fire(task, T0, since=T0 - MINUTE, now=T0) == []  # a second beat
    # The clock steps back two minutes and beat restarts with no memory of its last
    # fire: the occurrence before T0 (never fired) is not started behind T0's back.
    assert fire(task, T0 - MINUTE, since=None, now=T0 - timedelta(seconds=30)) == []
    assert [row.scheduled_for for row in ledger(task)] == [T0]


@pytest.mark.django_db(transaction=True)
def test_two_beats_firing_at_once_record_and_send_one_run(user: Any) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL (SQLite serialises writers by itself)")
    task = make_task(user)
    barrier = threading.Barrier(4)
    results: list[Any] = []

    def beat() -> None:
        try:
            barrier.wait()
            results.append(fire(task, T0 + 3 * MINUTE, since=T0, now=T0 + 3 * MINUTE))
        finally:
            close_old_connections()

    threads = [threading.Thread(target=beat) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(len(runs) for runs in results) == 1
    assert len(ledger(task)) == 3  # two missed + the fired one, each once


def test_a_one_time_task_never_runs_again_once_it_has_run(user: Any) -> None:
    at = T0 - timedelta(seconds=10)
    task = make_task(user, type="one-time", run_at=at)
    [run] = fire(task, at, since=None, now=T0)
    execution = TaskExecution.objects.get(pk=run.execution_id)
    execution.status, execution.started_at = ExecutionStatus.RUNNING, T0
    execution.save()
    finish(execution)
    assert ScheduledTask.objects.get(pk=task.pk).status == TaskStatus.COMPLETED
    # django-celery-beat #828: the one-off row fires again after a restart.
    assert fire(task, at, since=None, now=T0 + timedelta(days=1)) == []
    assert len(ledger(task)) == 1


def test_a_missed_one_time_task_under_skip_is_recorded_and_completed(user: Any) -> None:
    at = T0 - timedelta(hours=2)
    task = make_task(user, type="one-time", run_at=at, misfire_policy="skip")
    assert fire(task, at, since=None, now=T0) == []
    [row] = ledger(task)
    assert row.status == "skipped" and "downtime" in row.error
    assert ScheduledTask.objects.get(pk=task.pk).status == TaskStatus.COMPLETED


# --- overlap policy ---------------------------------------------------------------------


def running(task: ScheduledTask, occurrence: datetime) -> TaskExecution:
    return TaskExecution.objects.create(
        task=task,
        trigger="scheduled",
        scheduled_for=occurrence,
        status=ExecutionStatus.RUNNING,
        started_at=occurrence,
        attempt=1,
    )


def test_overlap_skip_records_the_occurrence_as_skipped(user: Any) -> None:
    task = make_task(user)
    running(task, T0)
    assert fire(task, T0 + MINUTE, since=T0, now=T0 + MINUTE) == []
    row = TaskExecution.objects.get(task=task, scheduled_for=T0 + MINUTE)
    assert row.status == "skipped"
    assert row.error == (
        "skipped: overlap: the run of 2031-03-04 12:00 UTC is still running (overlapPolicy skip)"
    )


def test_overlap_skip_counts_a_manual_run_too(user: Any) -> None:
    task = make_task(user)
    TaskExecution.objects.create(task=task, trigger="manual", status=ExecutionStatus.RETRYING)
    assert fire(task, T0, since=T0 - MINUTE, now=T0) == []
    assert "the manual run queued at" in ledger(task)[0].error


def test_overlap_queue_holds_one_and_skips_the_rest(user: Any, memory_broker: Any) -> None:
    task = make_task(user, overlap_policy="queue")
    first = running(task, T0)
    assert fire(task, T0 + MINUTE, since=T0, now=T0 + MINUTE) == []
    assert fire(task, T0 + 2 * MINUTE, since=T0 + MINUTE, now=T0 + 2 * MINUTE) == []
    held, skipped = ledger(task)[1:]
    assert held.held and held.status == "queued" and held.enqueued_at is None
    assert skipped.status == "skipped" and "already waiting" in skipped.error
    finish(first)
    held.refresh_from_db()
    assert not held.held and held.enqueued_at is not None
    assert [kwargs for _n, kwargs in published(memory_broker)] == [
        {"execution_id": str(held.pk), "attempt": 1}
    ]


@pytest.mark.parametrize("path", ["locked", "worker"])
def test_a_policy_changed_during_a_run_releases_the_run_it_held(
    user: Any, memory_broker: Any, path: str
) -> None:
    """A run goes by the task as it read it unless the task was saved meanwhile: switched
    to overlapPolicy queue during the run, the run it held is released when it ends
    (recorded under the row's lock, or by the worker's own outcome)."""
    from django.db import transaction
    from django.test import TestCase

    task = make_task(user)  # overlapPolicy skip
    first = running(task, T0)
    as_read = TaskExecution.objects.select_related("task").get(pk=first.pk)  # the claim's copy
    task.overlap_policy = "queue"
    task.save(update_fields=["overlap_policy"])
    assert fire(task, T0 + MINUTE, since=T0, now=T0 + MINUTE) == []
    [held] = [row for row in ledger(task) if row.held]
    with TestCase.captureOnCommitCallbacks(execute=True):
        if path == "locked":
            with transaction.atomic():
                executions._finish(as_read, status=ExecutionStatus.COMPLETED, now=timezone.now())
        else:
            outcome = executions.execution_finish(
                execution=as_read, status=ExecutionStatus.COMPLETED, logs=[], started=0.0
            )
            assert outcome.status == ExecutionStatus.COMPLETED
    held.refresh_from_db()
    assert not held.held and held.enqueued_at is not None
    assert [kwargs for _n, kwargs in published(memory_broker)] == [
        {"execution_id": str(held.pk), "attempt": 1}
    ]
    assert ScheduledTask.objects.get(pk=task.pk).run_count == 1


def test_a_retrying_run_keeps_the_next_one_waiting(user: Any, memory_broker: Any) -> None:
    task = make_task(user, overlap_policy="queue")
    first = running(task, T0)
    fire(task, T0 + MINUTE, since=T0, now=T0 + MINUTE)
    finish(first, ExecutionStatus.RETRYING)
    assert TaskExecution.objects.get(task=task, scheduled_for=T0 + MINUTE).held
    assert published(memory_broker) == []


def test_overlap_allow_runs_alongside(user: Any) -> None:
    task = make_task(user, overlap_policy="allow")
    running(task, T0)
    assert len(fire(task, T0 + MINUTE, since=T0, now=T0 + MINUTE)) == 1


def test_recovery_releases_a_run_left_waiting(
    user: Any, memory_broker: Any, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.SCHEDULER_REQUEUE_AFTER = 60
    task = make_task(user, overlap_policy="queue")
    first = running(task, T0)
    fire(task, T0 + MINUTE, since=T0, now=T0 + MINUTE)
    # The worker finished the first run but died before releasing the next one.
    TaskExecution.objects.filter(pk=first.pk).update(status="completed")
    TaskExecution.objects.filter(task=task, held=True).update(
        queued_at=timezone.now() - timedelta(minutes=5)
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert recovery.executions_recover() == 1
    [(_name, kwargs)] = published(memory_broker)
    assert kwargs["execution_id"] == str(ledger(task)[1].pk)


# --- jitter and window --------------------------------------------------------------------


def test_jitter_delays_each_run_by_a_stable_amount(user: Any) -> None:
    task = make_task(user, jitter_seconds=300)
    delays = {occurrences.jitter_for(task, T0 + i * MINUTE) for i in range(50)}
    assert all(0 <= delay <= 300 for delay in delays) and len(delays) > 25
    assert occurrences.jitter_for(task, T0) == occurrences.jitter_for(task, T0)
    [run] = fire(task, T0, since=T0 - MINUTE, now=T0)
    expected = occurrences.jitter_for(task, T0)
    assert run.countdown == expected
    row = ledger(task)[0]
    assert row.next_attempt_at == T0 + timedelta(seconds=expected)


def test_recovery_does_not_start_a_jittered_run_early(user: Any, settings: Any) -> None:
    settings.SCHEDULER_REQUEUE_AFTER = 60
    task = make_task(user, jitter_seconds=900)
    now = timezone.now()
    TaskExecution.objects.create(
        task=task,
        trigger="scheduled",
        scheduled_for=now - timedelta(minutes=5),
        status="queued",
        enqueued_at=now - timedelta(minutes=5),
        next_attempt_at=now + timedelta(minutes=5),
    )
    assert recovery.executions_recover() == 0


def test_no_fire_outside_the_window_and_the_last_one_completes_the_task(user: Any) -> None:
    task = make_task(user, cron="0 * * * *", start_at=T0, end_at=T0 + timedelta(hours=2))
    assert fire(task, T0 - timedelta(hours=1), since=None, now=T0 - timedelta(hours=1)) == []
    fire(task, T0 + timedelta(hours=1), since=T0 - timedelta(days=1), now=T0 + timedelta(hours=1))
    # Missed occurrences start at startAt (T0), not before.
    assert [row.scheduled_for for row in ledger(task)] == [T0, T0 + timedelta(hours=1)]
    assert ScheduledTask.objects.get(pk=task.pk).status == TaskStatus.ACTIVE
    fire(task, T0 + timedelta(hours=2), since=T0 + timedelta(hours=1), now=T0 + timedelta(hours=2))
    task.refresh_from_db()
    assert task.status == TaskStatus.COMPLETED and task.next_run is None
    assert task.periodic_task_id is None  # the beat row went with it


def test_next_run_moves_on_when_an_occurrence_fires(user: Any) -> None:
    task = make_task(user, cron="0 * * * *")
    fire(task, T0, since=T0 - timedelta(hours=1), now=T0 + timedelta(seconds=1))
    assert ScheduledTask.objects.get(pk=task.pk).next_run == T0 + timedelta(hours=1)


# --- pause ------------------------------------------------------------------------------------


def test_the_occurrences_of_a_pause_are_recorded_on_resume(user: Any) -> None:
    task = make_task(user, cron="*/10 * * * *", created=timezone.now() - timedelta(days=1))
    task_pause(task=task, reason="maintenance window")
    ScheduledTask.objects.filter(pk=task.pk).update(
        paused_at=timezone.now() - timedelta(minutes=60)
    )
    task.refresh_from_db()
    task_resume(task=task)
    rows = ledger(task)
    assert 5 <= len(rows) <= 6
    assert {row.status for row in rows} == {"skipped"}
    assert rows[0].error == "skipped: the task was paused (maintenance window)"
    task.refresh_from_db()
    assert task.status == "active" and task.paused_at is None


def test_a_fire_while_paused_is_recorded_as_skipped(user: Any) -> None:
    task = make_task(user)
    ScheduledTask.objects.filter(pk=task.pk).update(status="paused")
    assert fire(task, T0, since=T0 - MINUTE, now=T0) == []
    assert ledger(task)[0].error == "skipped: the task is paused"


# --- through the API ------------------------------------------------------------------------


def test_schedule_controls_round_trip_through_the_api(django_user_model: Any) -> None:
    from tests.api_clients import client_for

    api = client_for(django_user_model, "controls")
    schedule = {
        "cron": "*/15 * * * *",
        "timezone": "Europe/Paris",
        "misfirePolicy": "runAll",
        "catchupWindowSeconds": 7200,
        "overlapPolicy": "queue",
        "jitterSeconds": 120,
        "startAt": "2040-01-01T00:00:00+00:00",
        "endAt": "2040-06-01T00:00:00+00:00",
        "graceSeconds": 600,
    }
    body = {
        "name": "controls",
        "type": "recurring",
        "schedule": schedule,
        "action": {"type": "webhook", "url": "https://example.com/hook"},
    }
    created = api.post("/api/tasks", body, format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["schedule"] == schedule
    assert created.json()["nextRun"] == "2040-01-01T00:00:00+00:00"
    task = ScheduledTask.objects.get(pk=created.json()["id"])
    assert (task.periodic_task.start_time, task.periodic_task.expires) == (
        task.start_at,
        task.end_at,
    )
    # Back to the defaults: the JSON no longer mentions them.
    changed = api.patch(
        f"/api/tasks/{task.pk}",
        {"schedule": {"misfirePolicy": "runOnce", "startAt": None, "endAt": None}},
        format="json",
    )
    assert changed.status_code == 200, changed.json()
    assert "misfirePolicy" not in changed.json()["schedule"]
    assert "startAt" not in changed.json()["schedule"]
    task.periodic_task.refresh_from_db()
    assert task.periodic_task.start_time is None and task.periodic_task.expires is None
