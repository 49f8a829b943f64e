"""The life of an execution: occurrence record, claim, run, record; the Celery task that
drives it; publishing after commit; recovery of lost messages and workers.

Webhook actions talk to a real HTTP server on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from tasks_app import cron as cronlib
from tasks_app.conf import RUN_TASK_NAME
from tasks_app.models import (
    ExecutionStatus,
    ExecutionTrigger,
    ScheduledTask,
    TaskExecution,
    TaskStatus,
)
from tasks_app.services import dispatch, executions, recovery
from tasks_app.services.definitions import task_create, task_pause, task_resume, task_update
from tasks_app.tasks import run_step, run_task
from tests.broker import published, published_headers
from tests.http_receiver import Receiver, Reply
from tests.services import another_session

pytestmark = pytest.mark.django_db

HOST = executions.node()
OCCURRENCE = datetime(2031, 1, 6, 9, 30, tzinfo=UTC)


@pytest.fixture
def conf(settings: Any) -> Any:
    settings.SCHEDULER_TASK_TIME_LIMIT = 60
    settings.SCHEDULER_LEASE_GRACE = 5
    settings.SCHEDULER_MAX_DELIVERIES = 3
    settings.SCHEDULER_REQUEUE_AFTER = 300
    return settings


@pytest.fixture
def hook(receiver: Receiver, egress_allow_loopback: None, conf: Any) -> Receiver:
    return receiver


def webhook_task(
    owner: Any,
    url: str,
    *,
    type: str = "recurring",
    retry_policy: dict[str, Any] | None = None,
    **fields: Any,
) -> ScheduledTask:
    if type == "recurring":
        fields.setdefault("cron", "*/5 * * * *")
    if type == "one-time":
        fields.setdefault("run_at", timezone.now() + timedelta(hours=1))
    return task_create(
        owner=owner,
        name=f"{type} hook",
        type=type,
        action={"type": "webhook", "url": url, "body": {"hello": "world"}},
        retry_policy=retry_policy or {},
        **fields,
    )


def queued(task: ScheduledTask, **fields: Any) -> TaskExecution:
    fields.setdefault("trigger", ExecutionTrigger.MANUAL)
    return TaskExecution.objects.create(task=task, **fields)


def claim(execution: TaskExecution, attempt: int, worker: str) -> TaskExecution | None:
    return executions.execution_claim(
        execution_id=str(execution.pk), attempt=attempt, worker=worker
    )


def messages_of(execution: TaskExecution) -> list[str]:
    return [entry["message"] for entry in execution.logs]


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def live_pid() -> Iterator[int]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


# --- occurrences ------------------------------------------------------------------------


def test_one_record_per_occurrence(user: Any) -> None:
    task = webhook_task(user, "https://example.com/x")
    first = executions.execution_for_occurrence(task_id=str(task.id), scheduled_for=OCCURRENCE)
    again = executions.execution_for_occurrence(task_id=str(task.id), scheduled_for=OCCURRENCE)
    other = executions.execution_for_occurrence(
        task_id=str(task.id), scheduled_for=OCCURRENCE + timedelta(minutes=5)
    )
    assert first is not None and again is not None and other is not None
    assert again.pk == first.pk
    assert other.pk != first.pk
    assert (first.status, first.trigger, first.scheduled_for, first.attempt) == (
        ExecutionStatus.QUEUED,
        ExecutionTrigger.SCHEDULED,
        OCCURRENCE,
        0,
    )
    assert TaskExecution.objects.filter(task=task).count() == 2


def test_paused_task_occurrence_is_skipped(user: Any) -> None:
    task = webhook_task(user, "https://example.com/x")
    task_pause(task=task)
    execution = executions.execution_for_occurrence(task_id=str(task.id), scheduled_for=OCCURRENCE)
    assert execution is not None
    assert execution.status == ExecutionStatus.SKIPPED
    assert execution.error == "skipped: the task is paused"
    assert execution.completed_at is not None
    assert claim(execution, 1, "w:1") is None
    task.refresh_from_db()
    assert (task.run_count, task.last_run) == (0, None)


def test_paused_one_time_task_keeps_its_occurrence_owed(user: Any) -> None:
    """Pausing a one-time task must not use up its only run: nothing is recorded while
    it is paused, and after resuming the same occurrence runs."""
    task = webhook_task(user, "https://example.com/x", type="one-time")
    task_pause(task=task)
    assert (
        executions.execution_for_occurrence(task_id=str(task.id), scheduled_for=task.run_at) is None
    )
    assert not TaskExecution.objects.filter(task=task).exists()
    task_resume(task=task)
    execution = executions.execution_for_occurrence(task_id=str(task.id), scheduled_for=task.run_at)
    assert execution is not None and execution.status == ExecutionStatus.QUEUED


def test_full_save_of_a_stale_task_keeps_the_runtime_counters(user: Any) -> None:
    task = webhook_task(user, "https://example.com/x")
    ScheduledTask.objects.filter(pk=task.pk).update(run_count=5, last_run=OCCURRENCE)
    task.description = "edited from an object read before the runs"
    task.save()
    stored = ScheduledTask.objects.get(pk=task.pk)
    assert (stored.description, stored.run_count, stored.last_run) == (
        "edited from an object read before the runs",
        5,
        OCCURRENCE,
    )


def test_status_changes_do_not_revalidate_the_definition(user: Any) -> None:
    """A stored definition that no longer validates must not block pause, or the
    recording of a finished run."""
    task = webhook_task(user, "https://example.com/x")
    ScheduledTask.objects.filter(pk=task.pk).update(action={"type": "ai-prompt"})
    task.refresh_from_db()
    task_pause(task=task)
    assert ScheduledTask.objects.get(pk=task.pk).status == TaskStatus.PAUSED


def test_run_now_survives_a_broker_that_is_down(
    user: Any, django_capture_on_commit_callbacks: Any, caplog: Any
) -> None:
    from scheduler_project.celery import app as celery_app

    task = webhook_task(user, "https://example.com/x")
    original = celery_app.conf.broker_url
    celery_app.conf.broker_url = "redis://127.0.0.1:1/0"
    celery_app.conf.broker_connection_max_retries = 0
    celery_app._after_fork()
    try:
        with django_capture_on_commit_callbacks(execute=True):
            execution = dispatch.task_run_now(task=task)
    finally:
        celery_app.conf.broker_url = original
        celery_app.conf.broker_connection_max_retries = None
        celery_app._after_fork()
    stored = TaskExecution.objects.get(pk=execution.pk)
    assert stored.status == ExecutionStatus.QUEUED  # the recovery job will publish it
    assert "Error calling" in caplog.text


def test_finished_or_missing_task_makes_no_new_record(user: Any) -> None:
    task = webhook_task(user, "https://example.com/x", type="one-time")
    ScheduledTask.objects.filter(pk=task.pk).update(status=TaskStatus.COMPLETED)
    assert (
        executions.execution_for_occurrence(task_id=str(task.id), scheduled_for=OCCURRENCE) is None
    )
    missing = "00000000-0000-0000-0000-000000000000"
    assert executions.execution_for_occurrence(task_id=missing, scheduled_for=OCCURRENCE) is None
    assert TaskExecution.objects.count() == 0


# --- claims -----------------------------------------------------------------------------


def test_claim_first_attempt_once(user: Any, conf: Any) -> None:
    execution = queued(webhook_task(user, "https://example.com/x"))
    claimed = claim(execution, 1, "hostA:11")
    assert claimed is not None
    assert (claimed.status, claimed.attempt, claimed.deliveries, claimed.worker) == (
        ExecutionStatus.RUNNING,
        1,
        1,
        "hostA:11",
    )
    assert claimed.lease_expires_at - claimed.started_at == timedelta(seconds=65)
    assert messages_of(claimed) == ["attempt 1 started on hostA:11"]

    duplicate = claim(execution, 1, "otherhost:1")
    assert duplicate is None
    stored = TaskExecution.objects.get(pk=execution.pk)
    assert (stored.worker, stored.deliveries, stored.started_at) == (
        "hostA:11",
        1,
        claimed.started_at,
    )


def test_claim_for_a_stale_or_future_attempt_is_refused(user: Any, conf: Any) -> None:
    execution = queued(webhook_task(user, "https://example.com/x"))
    assert claim(execution, 2, "a:1") is None
    assert TaskExecution.objects.get(pk=execution.pk).status == ExecutionStatus.QUEUED

    TaskExecution.objects.filter(pk=execution.pk).update(status=ExecutionStatus.RETRYING, attempt=2)
    for attempt in (1, 2, 4):
        assert claim(execution, attempt, "a:1") is None
    claimed = claim(execution, 3, "a:1")
    assert claimed is not None and claimed.attempt == 3

    # A running attempt 3 with a dead holder cannot be taken over by a message for attempt 2.
    TaskExecution.objects.filter(pk=execution.pk).update(
        lease_expires_at=timezone.now() - timedelta(minutes=1)
    )
    assert claim(execution, 2, "b:1") is None


def test_claim_of_unknown_or_finished_execution(user: Any) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    assert executions.execution_claim(execution_id=missing, attempt=1, worker="a:1") is None
    task = webhook_task(user, "https://example.com/x")
    for status in (ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.SKIPPED):
        done = queued(task, status=status)
        assert claim(done, 1, "a:1") is None


def test_takeover_after_lease_expired(user: Any, conf: Any) -> None:
    execution = queued(webhook_task(user, "https://example.com/x"))
    claim(execution, 1, "hostA:11")
    TaskExecution.objects.filter(pk=execution.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    taken = claim(execution, 1, "hostB:22")
    assert taken is not None
    assert (taken.status, taken.attempt, taken.deliveries, taken.worker) == (
        ExecutionStatus.RUNNING,
        1,
        2,
        "hostB:22",
    )
    assert taken.lease_expires_at > timezone.now() + timedelta(seconds=60)
    assert messages_of(taken) == [
        "attempt 1 started on hostA:11",
        "attempt 1 was interrupted on hostA:11",
        "attempt 1 started on hostB:22",
    ]
    assert taken.logs[1]["level"] == "warning"
    stored = TaskExecution.objects.get(pk=execution.pk)
    assert (stored.worker, stored.deliveries) == ("hostB:22", 2)


def test_takeover_from_a_dead_process_on_this_host(user: Any, conf: Any) -> None:
    execution = queued(webhook_task(user, "https://example.com/x"))
    holder = f"{HOST}:{dead_pid()}"
    claim(execution, 1, holder)
    lease = TaskExecution.objects.get(pk=execution.pk).lease_expires_at
    assert lease > timezone.now()  # the lease is still live: only the dead pid allows this
    taken = claim(execution, 1, "b:1")
    assert taken is not None
    assert taken.deliveries == 2
    assert f"attempt 1 was interrupted on {holder}" in messages_of(taken)


def test_live_process_on_this_host_keeps_its_claim(user: Any, conf: Any, live_pid: int) -> None:
    execution = queued(webhook_task(user, "https://example.com/x"))
    claim(execution, 1, f"{HOST}:{live_pid}")
    assert claim(execution, 1, "b:1") is None


def test_same_thread_of_this_process_counts_as_finished(user: Any, conf: Any) -> None:
    execution = queued(webhook_task(user, "https://example.com/x"))
    claim(execution, 1, f"{HOST}:{os.getpid()}:{threading.get_ident()}")
    assert claim(execution, 1, "b:1") is not None


def test_another_thread_of_this_process_keeps_its_claim(user: Any, conf: Any) -> None:
    execution = queued(webhook_task(user, "https://example.com/x"))
    other_thread = threading.get_ident() + 1
    claim(execution, 1, f"{HOST}:{os.getpid()}:{other_thread}")
    assert claim(execution, 1, "b:1") is None


def test_worker_identity_names_host_process_and_thread() -> None:
    assert executions.worker_identity() == f"{HOST}:{os.getpid()}:{threading.get_ident()}"


def test_same_hostname_in_another_pid_namespace_is_not_judged_by_pid(user: Any, conf: Any) -> None:
    """Two containers may share a hostname; a PID from the other one means nothing here."""
    execution = queued(webhook_task(user, "https://example.com/x"))
    claim(execution, 1, f"{socket.gethostname()}/0000dead:{dead_pid()}:1")
    assert claim(execution, 1, "b:1") is None


def test_live_holder_on_another_host_blocks(user: Any, conf: Any) -> None:
    execution = queued(webhook_task(user, "https://example.com/x"))
    # pid 999999 does not exist here, but the holder is on another host: only its lease counts.
    claim(execution, 1, "elsewhere.example:999999")
    assert claim(execution, 1, "b:1") is None
    stored = TaskExecution.objects.get(pk=execution.pk)
    assert (stored.status, stored.worker, stored.deliveries) == (
        ExecutionStatus.RUNNING,
        "elsewhere.example:999999",
        1,
    )


def test_a_claim_that_loses_the_race_is_judged_under_the_lock(
    user: Any, conf: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The usual claim sets the row only while it is waiting at the previous attempt:
    another worker taking the attempt just before wins, and this delivery is refused."""
    execution = queued(webhook_task(user, "https://example.com/x"))
    entry = executions.log_entry

    def rival_claims_first(message: str, level: str = "info") -> dict[str, str]:
        monkeypatch.setattr(executions, "log_entry", entry)
        assert claim(execution, 1, "elsewhere.example:7") is not None
        return entry(message, level)

    monkeypatch.setattr(executions, "log_entry", rival_claims_first)
    assert claim(execution, 1, "b:1") is None
    stored = TaskExecution.objects.get(pk=execution.pk)
    assert (stored.worker, stored.deliveries) == ("elsewhere.example:7", 1)
    assert messages_of(stored) == ["attempt 1 started on elsewhere.example:7"]


def test_the_outcome_appends_to_the_logs_in_the_database(user: Any, hook: Receiver) -> None:
    """Neither the claim nor the outcome rewrites the log list from memory: lines written
    meanwhile are kept, in order."""
    task = webhook_task(user, f"{hook.url}/hook")
    execution = queued(task, logs=[executions.log_entry("queued by a test")])
    claimed = claim(execution, 1, "a:1")
    assert claimed is not None
    stored = TaskExecution.objects.get(pk=execution.pk)
    TaskExecution.objects.filter(pk=execution.pk).update(
        logs=[*stored.logs, executions.log_entry("written meanwhile")]
    )
    assert executions.execution_run(execution=claimed).status == ExecutionStatus.COMPLETED
    stored = TaskExecution.objects.get(pk=execution.pk)
    assert messages_of(stored) == [
        "queued by a test",
        "attempt 1 started on a:1",
        "written meanwhile",
        f"POST {hook.url}/hook",
        "answered 200 (12 bytes)",
    ]
    assert stored.status == ExecutionStatus.COMPLETED


def test_a_log_that_holds_no_list_starts_a_new_one(user: Any, hook: Receiver) -> None:
    execution = queued(webhook_task(user, f"{hook.url}/hook"))
    TaskExecution.objects.filter(pk=execution.pk).update(logs={"not": "a list"})
    claimed = claim(execution, 1, "a:1")
    assert claimed is not None
    stored = TaskExecution.objects.get(pk=execution.pk)
    assert messages_of(stored) == ["attempt 1 started on a:1"]


def test_a_run_counts_on_its_task_and_leaves_next_run_to_the_schedule(
    user: Any, hook: Receiver
) -> None:
    """A recurring task's next_run is moved by its fires and edits; a run adds to its
    counters only (in one statement, the task not being read again)."""
    task = webhook_task(user, f"{hook.url}/hook", cron="0 12 * * *")
    planned = timezone.now() + timedelta(days=3)
    ScheduledTask.objects.filter(pk=task.pk).update(next_run=planned, run_count=4)
    claimed = claim(queued(task), 1, "a:1")
    assert claimed is not None
    assert executions.execution_run(execution=claimed).status == ExecutionStatus.COMPLETED
    task.refresh_from_db()
    assert (task.next_run, task.run_count, task.last_run) == (planned, 5, claimed.started_at)


def test_gives_up_after_max_deliveries(user: Any, conf: Any) -> None:
    task = webhook_task(user, "https://example.com/x", type="one-time")
    execution = executions.execution_for_occurrence(task_id=str(task.id), scheduled_for=task.run_at)
    assert execution is not None
    workers = ["w1:1", "w2:2", "w3:3"]
    for worker in workers:
        assert claim(execution, 1, worker) is not None
        TaskExecution.objects.filter(pk=execution.pk).update(
            lease_expires_at=timezone.now() - timedelta(seconds=1)
        )
    assert claim(execution, 1, "w4:4") is None
    stored = TaskExecution.objects.get(pk=execution.pk)
    assert stored.status == ExecutionStatus.FAILED
    assert stored.error == "the worker running this execution was lost 3 times; giving up"
    assert stored.deliveries == 3
    assert stored.completed_at is not None
    assert stored.lease_expires_at is None
    assert messages_of(stored)[-1] == "attempt 1 was interrupted on w3:3"
    task.refresh_from_db()
    assert (task.status, task.run_count, task.periodic_task_id) == (TaskStatus.FAILED, 1, None)
    assert PeriodicTask.objects.count() == 0


def test_outcome_of_a_superseded_attempt_is_dropped(user: Any, hook: Receiver) -> None:
    task = webhook_task(user, f"{hook.url}/hook")
    execution = queued(task)
    first = claim(execution, 1, "a:1")
    TaskExecution.objects.filter(pk=execution.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    second = claim(execution, 1, "b:2")
    assert first is not None and second is not None
    assert executions.execution_run(execution=first) == executions.Outcome(status="superseded")
    assert TaskExecution.objects.get(pk=execution.pk).status == ExecutionStatus.RUNNING
    assert executions.execution_run(execution=second) == executions.Outcome(status="completed")
    stored = TaskExecution.objects.get(pk=execution.pk)
    assert (stored.status, stored.worker) == (ExecutionStatus.COMPLETED, "b:2")
    task.refresh_from_db()
    assert task.run_count == 1


# --- running a webhook ----------------------------------------------------------------------


def test_run_task_records_a_completed_webhook(user: Any, hook: Receiver) -> None:
    hook.reply("/hook", Reply(status=201, body={"received": True}, delay=0.05))
    task = webhook_task(user, f"{hook.url}/hook", cron="0 12 * * *", timezone="Asia/Tokyo")
    execution = queued(task)

    result = run_task.apply(kwargs={"execution_id": str(execution.pk), "attempt": 1})

    assert result.get() == {"outcome": "completed", "executionId": str(execution.pk)}
    [request] = hook.received("/hook")
    assert request.method == "POST"
    assert request.json() == {"hello": "world"}
    assert request.headers["Idempotency-Key"] == str(execution.pk)

    stored = TaskExecution.objects.get(pk=execution.pk)
    assert stored.status == ExecutionStatus.COMPLETED
    assert stored.attempt == 1
    assert stored.error == ""
    assert stored.result == {
        "status": 201,
        "headers": {"Content-Type": "application/json", "Content-Length": "18"},
        "body": {"received": True},
    }
    assert 50 <= stored.duration_ms < 5000
    assert stored.started_at is not None and stored.completed_at >= stored.started_at
    assert stored.lease_expires_at is None
    assert stored.worker == executions.worker_identity()
    assert messages_of(stored) == [
        f"attempt 1 started on {executions.worker_identity()}",
        f"POST {hook.url}/hook",
        "answered 201 (18 bytes)",
    ]

    task.refresh_from_db()
    assert task.last_run == stored.started_at
    assert task.run_count == 1
    assert task.status == TaskStatus.ACTIVE
    assert task.next_run == cronlib.Cron("0 12 * * *", "Asia/Tokyo").next_after(timezone.now())
    assert task.next_run.hour == 3  # 12:00 JST

    again = run_task.apply(kwargs={"execution_id": str(execution.pk), "attempt": 1})
    assert again.get() == {"outcome": "duplicate", "executionId": str(execution.pk)}
    assert len(hook.received("/hook")) == 1
    task.refresh_from_db()
    assert task.run_count == 1


def test_runs_store_a_celery_result_only_when_asked() -> None:
    """The execution history records every run; SCHEDULER_CELERY_RESULTS=true also keeps
    django-celery-results' row per run (the decision is made when the tasks are defined)."""
    assert run_task.ignore_result and run_step.ignore_result
    code = (
        "import django; django.setup()\n"
        "from tasks_app.tasks import run_task, run_step\n"
        "print(run_task.ignore_result, run_step.ignore_result)"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "scheduler_project.settings"}
    for value, expected in (("true", "False False"), ("", "True True")):
        done = subprocess.run(
            [sys.executable, "-c", code],
            env={**env, "SCHEDULER_CELERY_RESULTS": value},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert done.stdout.split()[-2:] == expected.split(), done.stderr


def test_beat_message_runs_the_occurrence_once(user: Any, hook: Receiver) -> None:
    task = webhook_task(user, f"{hook.url}/beat")
    kwargs = {"task_id": str(task.id), "scheduled_for": OCCURRENCE.isoformat()}
    first = run_task.apply(kwargs=kwargs).get()
    second = run_task.apply(kwargs=kwargs).get()
    execution = TaskExecution.objects.get(task=task)
    assert first == {"outcome": "completed", "executionId": str(execution.pk)}
    assert second == {"outcome": "duplicate", "executionId": str(execution.pk)}
    assert (execution.trigger, execution.scheduled_for) == (ExecutionTrigger.SCHEDULED, OCCURRENCE)
    assert len(hook.received("/beat")) == 1
    assert ScheduledTask.objects.get(pk=task.pk).run_count == 1


def test_run_task_ignores_messages_without_a_target(user: Any) -> None:
    assert run_task.apply(kwargs={}).get() == {
        "outcome": "ignored",
        "reason": "message names no execution",
    }
    missing = {
        "task_id": "00000000-0000-0000-0000-000000000000",
        "scheduled_for": "2031-01-01T00:00:00+00:00",
    }
    assert run_task.apply(kwargs=missing).get() == {
        "outcome": "ignored",
        "reason": "task no longer exists or has finished",
    }


def test_one_time_occurrence_completes_the_task(user: Any, hook: Receiver) -> None:
    task = webhook_task(user, f"{hook.url}/once", type="one-time")
    assert PeriodicTask.objects.filter(pk=task.periodic_task_id).exists()
    kwargs = {"task_id": str(task.id), "scheduled_for": task.run_at.isoformat()}
    assert run_task.apply(kwargs=kwargs).get()["outcome"] == "completed"
    task.refresh_from_db()
    assert task.status == TaskStatus.COMPLETED
    assert task.run_count == 1
    assert task.next_run is None
    assert task.periodic_task_id is None
    assert PeriodicTask.objects.count() == 0
    # A late duplicate of the same beat message finds the finished record.
    assert run_task.apply(kwargs=kwargs).get()["outcome"] == "duplicate"
    assert len(hook.received("/once")) == 1


def test_manual_run_of_a_one_time_task_keeps_it_active(user: Any, hook: Receiver) -> None:
    task = webhook_task(user, f"{hook.url}/once", type="one-time")
    execution = queued(task)
    assert run_task.apply(kwargs={"execution_id": str(execution.pk)}).get()["outcome"] == (
        "completed"
    )
    task.refresh_from_db()
    assert (task.status, task.run_count, task.next_run) == (TaskStatus.ACTIVE, 1, task.run_at)
    assert PeriodicTask.objects.filter(pk=task.periodic_task_id, enabled=True).exists()


def test_retry_path_through_the_services(user: Any, hook: Receiver) -> None:
    hook.reply("/flaky", Reply(status=503, body={"error": "busy"}))
    task = webhook_task(
        user, f"{hook.url}/flaky", retry_policy={"maxRetries": 2, "backoffMs": 1000, "jitter": 0}
    )
    execution = queued(task)
    pk = str(execution.pk)
    error = f"POST {hook.url}/flaky answered HTTP 503"

    claimed = executions.execution_claim(execution_id=pk, attempt=1, worker="a:1")
    assert claimed is not None
    before = timezone.now()
    outcome = executions.execution_run(execution=claimed)
    assert outcome == executions.Outcome(status=ExecutionStatus.RETRYING, retry_in=1.0)
    stored = TaskExecution.objects.get(pk=pk)
    assert (stored.status, stored.attempt, stored.error) == (ExecutionStatus.RETRYING, 1, error)
    assert before + timedelta(seconds=1) <= stored.next_attempt_at
    assert stored.next_attempt_at <= timezone.now() + timedelta(seconds=1)
    assert stored.completed_at is None
    assert stored.lease_expires_at is None
    assert messages_of(stored)[-2:] == [
        f"attempt 1 failed: {error}",
        "retrying in 1s (attempt 2 of 3)",
    ]
    assert stored.logs[-2]["level"] == "error"
    assert ScheduledTask.objects.get(pk=task.pk).run_count == 0

    assert executions.execution_claim(execution_id=pk, attempt=1, worker="dup:1") is None
    second = executions.execution_claim(execution_id=pk, attempt=2, worker="a:1")
    assert second is not None and second.next_attempt_at is None
    assert executions.execution_run(execution=second) == executions.Outcome(
        status=ExecutionStatus.RETRYING, retry_in=2.0
    )
    third = executions.execution_claim(execution_id=pk, attempt=3, worker="a:1")
    assert third is not None
    assert executions.execution_run(execution=third) == executions.Outcome(
        status=ExecutionStatus.FAILED
    )
    assert executions.execution_claim(execution_id=pk, attempt=4, worker="a:1") is None

    stored = TaskExecution.objects.get(pk=pk)
    assert (stored.status, stored.attempt, stored.error) == (ExecutionStatus.FAILED, 3, error)
    assert stored.completed_at is not None
    assert stored.result is None
    assert messages_of(stored)[-1] == f"attempt 3 failed: {error}"
    assert "retrying in 2s (attempt 3 of 3)" in messages_of(stored)
    requests = hook.received("/flaky")
    assert len(requests) == 3
    assert {r.headers["Idempotency-Key"] for r in requests} == {pk}
    task.refresh_from_db()
    assert (task.run_count, task.last_run, task.status) == (1, stored.started_at, "active")


def test_retries_run_eagerly_through_run_task(user: Any, hook: Receiver) -> None:
    hook.reply(
        "/recovering",
        Reply(status=503, times=1),
        Reply(status=500, times=1),
        Reply(status=200, body={"finally": True}),
    )
    task = webhook_task(
        user, f"{hook.url}/recovering", retry_policy={"maxRetries": 3, "backoffMs": 10}
    )
    execution = queued(task)
    result = run_task.apply(kwargs={"execution_id": str(execution.pk), "attempt": 1})
    assert result.get() == {"outcome": "completed", "executionId": str(execution.pk)}
    stored = TaskExecution.objects.get(pk=execution.pk)
    assert (stored.status, stored.attempt, stored.error) == (ExecutionStatus.COMPLETED, 3, "")
    assert stored.result["body"] == {"finally": True}
    assert len(hook.received("/recovering")) == 3
    assert ScheduledTask.objects.get(pk=task.pk).run_count == 1


def test_not_found_fails_at_once(user: Any, hook: Receiver) -> None:
    hook.reply("/gone", Reply(status=404, body={"error": "no such thing"}))
    task = webhook_task(
        user, f"{hook.url}/gone", type="one-time", retry_policy={"maxRetries": 5, "backoffMs": 10}
    )
    execution = executions.execution_for_occurrence(task_id=str(task.id), scheduled_for=task.run_at)
    assert execution is not None
    result = run_task.apply(kwargs={"execution_id": str(execution.pk), "attempt": 1}).get()
    assert result == {"outcome": "failed", "executionId": str(execution.pk)}
    stored = TaskExecution.objects.get(pk=execution.pk)
    assert stored.status == ExecutionStatus.FAILED
    assert stored.attempt == 1
    assert stored.error == f"POST {hook.url}/gone answered HTTP 404"
    assert stored.next_attempt_at is None
    assert not any(m.startswith("retrying") for m in messages_of(stored))
    assert len(hook.received("/gone")) == 1
    task.refresh_from_db()
    assert (task.status, task.run_count, task.periodic_task_id) == (TaskStatus.FAILED, 1, None)


def test_unreachable_endpoint_is_retryable(
    user: Any, conf: Any, egress_allow_loopback: None
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    task = webhook_task(
        user, f"http://127.0.0.1:{port}/", retry_policy={"maxRetries": 1, "jitter": 0}
    )
    claimed = executions.execution_claim(execution_id=str(queued(task).pk), attempt=1, worker="a:1")
    assert claimed is not None
    outcome = executions.execution_run(execution=claimed)
    assert outcome == executions.Outcome(status=ExecutionStatus.RETRYING, retry_in=60.0)
    assert "failed to connect" in TaskExecution.objects.get(pk=claimed.pk).error


def test_loopback_is_refused_without_an_egress_allowance(
    user: Any, receiver: Receiver, conf: Any
) -> None:
    task = webhook_task(user, f"{receiver.url}/private", retry_policy={"maxRetries": 3})
    execution = queued(task)
    result = run_task.apply(kwargs={"execution_id": str(execution.pk)}).get()
    assert result["outcome"] == "failed"
    stored = TaskExecution.objects.get(pk=execution.pk)
    assert stored.attempt == 1
    assert "which is not a public address" in stored.error
    assert receiver.received("/private") == []


# --- dispatch and recovery ------------------------------------------------------------------


def test_run_now_publishes_only_after_commit(
    user: Any, django_capture_on_commit_callbacks: Any, memory_broker: Any
) -> None:
    task = webhook_task(user, "https://example.com/x")
    with django_capture_on_commit_callbacks() as callbacks:
        execution = dispatch.task_run_now(task=task)
        assert published(memory_broker) == []
    assert len(callbacks) == 1
    assert published(memory_broker) == []  # still not committed: nothing was sent

    stored = TaskExecution.objects.get(pk=execution.pk)
    assert (stored.status, stored.trigger, stored.attempt, stored.payload) == (
        ExecutionStatus.QUEUED,
        ExecutionTrigger.MANUAL,
        0,
        None,
    )
    assert stored.enqueued_at is not None

    callbacks[0]()  # what the commit does
    assert published(memory_broker) == [
        (RUN_TASK_NAME, {"execution_id": str(execution.pk), "attempt": 1})
    ]


@pytest.mark.parametrize("results", [False, True])
def test_a_run_message_says_whether_its_run_keeps_a_celery_result(
    user: Any,
    settings: Any,
    memory_broker: Any,
    django_capture_on_commit_callbacks: Any,
    results: bool,
) -> None:
    # The web server (and beat) send runs by name, without the task: the message says it,
    # or a Redis result backend would subscribe to every run's result.
    settings.SCHEDULER_CELERY_RESULTS = results
    task = webhook_task(user, "https://example.com/x")
    with django_capture_on_commit_callbacks(execute=True):
        dispatch.task_run_now(task=task)
    [headers] = published_headers(memory_broker)
    assert (headers["task"], headers["ignore_result"]) == (RUN_TASK_NAME, not results)


def test_beats_own_jobs_say_they_keep_no_result_as_their_tasks_do(settings: Any) -> None:
    from celery import current_app

    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        task = current_app.tasks[entry["task"]]
        assert task.ignore_result is True
        assert entry["options"]["ignore_result"] is True, entry


def test_run_now_with_a_trigger_payload(user: Any, django_capture_on_commit_callbacks: Any) -> None:
    task = task_create(
        owner=user,
        name="t",
        type="trigger",
        trigger={"type": "event", "config": {"event": "x"}},
        action={"type": "webhook", "url": "https://example.com"},
    )
    with django_capture_on_commit_callbacks() as callbacks:
        first = dispatch.task_run_now(task=task, trigger=ExecutionTrigger.EVENT, payload={"a": 1})
        second = dispatch.task_run_now(task=task, trigger=ExecutionTrigger.EVENT, payload={"a": 2})
    assert len(callbacks) == 2
    assert first.pk != second.pk
    assert list(
        TaskExecution.objects.filter(task=task)
        .order_by("payload__a")
        .values_list("trigger", "payload")
    ) == [("event", {"a": 1}), ("event", {"a": 2})]


def test_run_now_rolled_back_publishes_nothing(
    user: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from django.db import transaction

    task = webhook_task(user, "https://example.com/x")
    with django_capture_on_commit_callbacks() as callbacks:
        with pytest.raises(RuntimeError), transaction.atomic():
            dispatch.task_run_now(task=task)
            raise RuntimeError
    assert callbacks == []
    assert TaskExecution.objects.count() == 0


def test_recovery_republishes_lost_executions_only(
    user: Any,
    conf: Any,
    django_capture_on_commit_callbacks: Any,
    memory_broker: Any,
) -> None:
    task = webhook_task(user, "https://example.com/x")
    now = timezone.now()
    long_ago = now - timedelta(minutes=30)

    lost_worker = queued(task, status=ExecutionStatus.RUNNING, attempt=2, worker="gone:1")
    TaskExecution.objects.filter(pk=lost_worker.pk).update(
        enqueued_at=long_ago, lease_expires_at=now - timedelta(seconds=5)
    )
    never_started = queued(task)
    TaskExecution.objects.filter(pk=never_started.pk).update(queued_at=long_ago)
    lost_retry = queued(task, status=ExecutionStatus.RETRYING, attempt=1)
    TaskExecution.objects.filter(pk=lost_retry.pk).update(
        enqueued_at=long_ago, next_attempt_at=long_ago
    )
    # Left alone: fresh, still leased, retry not yet due, finished.
    fresh = queued(task)
    leased = queued(task, status=ExecutionStatus.RUNNING, attempt=1, worker="busy:1")
    TaskExecution.objects.filter(pk=leased.pk).update(
        enqueued_at=long_ago, lease_expires_at=now + timedelta(minutes=1)
    )
    waiting_retry = queued(task, status=ExecutionStatus.RETRYING, attempt=1)
    TaskExecution.objects.filter(pk=waiting_retry.pk).update(
        enqueued_at=long_ago, next_attempt_at=now + timedelta(minutes=5)
    )
    done = queued(task, status=ExecutionStatus.COMPLETED)
    TaskExecution.objects.filter(pk=done.pk).update(queued_at=long_ago)

    with django_capture_on_commit_callbacks() as callbacks:
        assert recovery.executions_recover() == 3
    assert len(callbacks) == 3
    assert published(memory_broker) == []
    for callback in callbacks:
        callback()
    assert sorted(published(memory_broker), key=lambda m: m[1]["execution_id"]) == sorted(
        [
            (RUN_TASK_NAME, {"execution_id": str(lost_worker.pk), "attempt": 2}),
            (RUN_TASK_NAME, {"execution_id": str(never_started.pk), "attempt": 1}),
            (RUN_TASK_NAME, {"execution_id": str(lost_retry.pk), "attempt": 2}),
        ],
        key=lambda m: m[1]["execution_id"],
    )
    for execution in (lost_worker, never_started, lost_retry):
        assert TaskExecution.objects.get(pk=execution.pk).enqueued_at >= now
    for execution in (fresh, leased, waiting_retry, done):
        enqueued = TaskExecution.objects.get(pk=execution.pk).enqueued_at
        assert enqueued is None or enqueued < now

    # Just re-sent: a second pass right away sends nothing more.
    with django_capture_on_commit_callbacks() as again:
        assert recovery.executions_recover() == 0
    assert again == []


def test_recovered_lost_worker_message_is_claimable(user: Any, hook: Receiver) -> None:
    task = webhook_task(user, f"{hook.url}/recover")
    execution = queued(task)
    claim(execution, 1, "gone:1")
    TaskExecution.objects.filter(pk=execution.pk).update(
        enqueued_at=timezone.now() - timedelta(minutes=10),
        lease_expires_at=timezone.now() - timedelta(seconds=1),
    )
    assert recovery.executions_recover() == 1
    result = run_task.apply(kwargs={"execution_id": str(execution.pk), "attempt": 1}).get()
    assert result["outcome"] == "completed"
    stored = TaskExecution.objects.get(pk=execution.pk)
    assert (stored.status, stored.attempt, stored.deliveries) == (ExecutionStatus.COMPLETED, 1, 2)
    assert "attempt 1 was interrupted on gone:1" in messages_of(stored)


# --- definition changes while an attempt runs ------------------------------------------------


def test_pause_during_a_run_leaves_the_task_paused_without_next_run(
    user: Any, hook: Receiver
) -> None:
    task = webhook_task(user, f"{hook.url}/hook")
    claimed = executions.execution_claim(execution_id=str(queued(task).pk), attempt=1, worker="a:1")
    assert claimed is not None
    task_pause(task=ScheduledTask.objects.get(pk=task.pk))
    assert executions.execution_run(execution=claimed).status == ExecutionStatus.COMPLETED
    task.refresh_from_db()
    assert (task.status, task.run_count, task.next_run) == (TaskStatus.PAUSED, 1, None)
    assert PeriodicTask.objects.get(pk=task.periodic_task_id).enabled is False


def test_cron_change_during_a_run_sets_next_run_from_the_new_cron(
    user: Any, hook: Receiver
) -> None:
    task = webhook_task(user, f"{hook.url}/hook", cron="0 3 * * *")
    claimed = executions.execution_claim(execution_id=str(queued(task).pk), attempt=1, worker="a:1")
    assert claimed is not None
    task_update(task=ScheduledTask.objects.get(pk=task.pk), cron="0 15 * * *")
    executions.execution_run(execution=claimed)
    task.refresh_from_db()
    assert task.next_run == cronlib.Cron("0 15 * * *", "UTC").next_after(timezone.now())


def test_one_time_task_rescheduled_during_its_run_stays_armed(user: Any, hook: Receiver) -> None:
    task = webhook_task(user, f"{hook.url}/once", type="one-time")
    execution = executions.execution_for_occurrence(task_id=str(task.id), scheduled_for=task.run_at)
    assert execution is not None
    claimed = claim(execution, 1, "a:1")
    assert claimed is not None
    later = timezone.now() + timedelta(days=1)
    task_update(task=ScheduledTask.objects.get(pk=task.pk), run_at=later)
    assert executions.execution_run(execution=claimed).status == ExecutionStatus.COMPLETED
    task.refresh_from_db()
    assert (task.status, task.run_count, task.next_run) == (TaskStatus.ACTIVE, 1, later)
    periodic = PeriodicTask.objects.get(pk=task.periodic_task_id)
    assert (periodic.enabled, periodic.clocked.clocked_time) == (True, later)


def test_one_time_task_paused_during_its_run_still_finishes(user: Any, hook: Receiver) -> None:
    task = webhook_task(user, f"{hook.url}/once", type="one-time")
    execution = executions.execution_for_occurrence(task_id=str(task.id), scheduled_for=task.run_at)
    assert execution is not None
    claimed = claim(execution, 1, "a:1")
    assert claimed is not None
    task_pause(task=ScheduledTask.objects.get(pk=task.pk))
    assert executions.execution_run(execution=claimed).status == ExecutionStatus.COMPLETED
    task.refresh_from_db()
    assert (task.status, task.next_run, task.periodic_task_id) == (TaskStatus.COMPLETED, None, None)
    assert PeriodicTask.objects.count() == 0


def test_outputs_postgresql_cannot_store_are_made_storable(user: Any, hook: Receiver) -> None:
    """A response with NaN, NUL and a lone surrogate must not make the record unsavable
    (that would leave the execution running, and re-run the side effect)."""
    hook.reply(
        "/odd",
        Reply(
            body=b'{"value": NaN, "big": Infinity, "text": "a\\u0000b", "bad": "\\ud800"}',
            headers={"Content-Type": "application/json"},
        ),
    )
    task = webhook_task(user, f"{hook.url}/odd")
    execution = executions.execution_claim(
        execution_id=str(queued(task).pk), attempt=1, worker="a:1"
    )
    assert executions.execution_run(execution=execution).status == ExecutionStatus.COMPLETED
    stored = TaskExecution.objects.get(pk=execution.pk)
    assert stored.status == ExecutionStatus.COMPLETED
    assert stored.result["body"] == {
        "value": "NaN",
        "big": "Infinity",
        "text": "a\ufffdb",
        "bad": "?",
    }


def _end_this_session() -> None:
    """The database ends the ORM connection's session (as a PostgreSQL restart would)."""
    from django.db import connection

    with another_session("postgres") as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (connection.connection.info.backend_pid,))


@pytest.mark.django_db(transaction=True)
def test_outcome_is_recorded_after_the_database_drops_the_connection(
    user: Any, hook: Receiver
) -> None:
    """The database connection dies between the action and its record (a PostgreSQL
    restart): the outcome is still written once the database answers again."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("terminates a PostgreSQL backend")

    task = webhook_task(user, f"{hook.url}/ok")
    execution = executions.execution_claim(
        execution_id=str(queued(task).pk), attempt=1, worker="a:1"
    )
    _end_this_session()
    outcome = executions.execution_run(execution=execution)
    assert outcome.status == ExecutionStatus.COMPLETED
    assert TaskExecution.objects.get(pk=execution.pk).status == ExecutionStatus.COMPLETED
    assert len(hook.received("/ok")) == 1


@pytest.mark.django_db(transaction=True)
def test_a_run_right_after_another_skips_the_health_check_and_survives_a_broken_connection(
    user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kept connection that was fine at the end of the last run a moment ago is not
    tested before the next run (a round trip per run); if it broke meanwhile, the claim
    takes a new connection and claims once. Other tasks, runs after a failed run or a
    connection left in a transaction, and a connection seen fine longer ago are tested."""
    from django.db import connection

    from tasks_app import tasks
    from tasks_app.tasks import notify_execution

    if connection.vendor != "postgresql":
        pytest.skip("terminates a PostgreSQL backend")

    task = webhook_task(user, "https://example.com/x")
    execution = queued(task)
    a_run = {"execution_id": str(execution.pk), "attempt": 1}

    def tested_before(sender: Any = run_task, kwargs: Any = a_run) -> bool:
        tasks._database_connections_before(sender=sender, kwargs=kwargs)
        assert connection.connection is not None
        return not connection.health_check_done

    def production_settings() -> None:  # the suite's are CONN_MAX_AGE 0, no health checks
        connection.ensure_connection()
        connection.close_at, connection.health_check_enabled = None, True
        connection.scheduler_fine_at = None

    production_settings()
    tasks._database_connections_after(sender=run_task, state="FAILURE")
    assert tested_before()
    tasks._database_connections_after(sender=notify_execution, state="SUCCESS")
    assert tested_before()
    connection.connection.execute("BEGIN")  # left in a transaction
    tasks._database_connections_after(sender=run_task, state="SUCCESS")
    connection.connection.execute("ROLLBACK")
    assert tested_before()
    tasks._database_connections_after(sender=run_task, state="SUCCESS")
    assert tested_before(notify_execution, {"execution_id": str(execution.pk)})
    assert tested_before(run_task, {"task_id": str(task.pk), "scheduled_for": "x"})
    assert not tested_before()

    _end_this_session()
    claimed = executions.execution_claim(execution_id=str(execution.pk), attempt=1, worker="a:1")
    assert claimed is not None and claimed.task.pk == task.pk
    stored = TaskExecution.objects.get(pk=execution.pk)
    assert (stored.status, stored.attempt, stored.deliveries) == (ExecutionStatus.RUNNING, 1, 1)
    assert messages_of(stored) == ["attempt 1 started on a:1"]

    production_settings()  # the new connection
    tasks._database_connections_after(sender=run_task, state="SUCCESS")
    monkeypatch.setattr(tasks, "FRESH_CONNECTION_SECONDS", 0.0)
    assert tested_before()
    connection.close()  # the next connection takes the suite's settings again


@pytest.mark.django_db(transaction=True)
def test_a_claim_whose_answer_was_lost_is_its_own_on_the_retry(
    user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim's statement took the attempt but the connection broke before its answer:
    the retry on a new connection finds this very claim and runs it, not a takeover
    (no second delivery, no 'interrupted' line; with SCHEDULER_MAX_DELIVERIES 1 it runs)."""
    from django.db import OperationalError

    from tasks_app import rows

    task = webhook_task(user, "https://example.com/x")
    execution = queued(task)
    real = rows.update_returning
    calls: list[Any] = []

    def answer_lost(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        found = real(*args, **kwargs)
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return found

    monkeypatch.setattr(rows, "update_returning", answer_lost)
    claimed = executions.execution_claim(execution_id=str(execution.pk), attempt=1, worker="a:1")
    assert claimed is not None and claimed.task.pk == task.pk
    assert (claimed.status, claimed.deliveries) == (ExecutionStatus.RUNNING, 1)
    stored = TaskExecution.objects.get(pk=execution.pk)
    assert (stored.status, stored.attempt, stored.deliveries) == (ExecutionStatus.RUNNING, 1, 1)
    assert messages_of(stored) == ["attempt 1 started on a:1"]
    # Another delivery of the same attempt is still a duplicate.
    monkeypatch.setattr(rows, "update_returning", real)
    assert (
        executions.execution_claim(execution_id=str(execution.pk), attempt=1, worker="b:2") is None
    )


def test_hard_time_limit_kill_fails_the_attempt_instead_of_rerunning_it(user: Any) -> None:
    """Celery calls the task's on_failure in the worker's main process when it kills an
    attempt at the hard limit; the attempt then ends failed (not 'lost', not re-run)."""
    from celery.exceptions import TimeLimitExceeded

    task = webhook_task(user, "https://example.com/x")
    execution = claim(queued(task), 1, "a:1")
    kwargs = {"execution_id": str(execution.pk), "attempt": 1}
    run_task.on_failure(TimeLimitExceeded(20.0), "celery-id", (), kwargs, None)
    stored = TaskExecution.objects.get(pk=execution.pk)
    assert stored.status == ExecutionStatus.FAILED
    assert stored.error == "the action exceeded the hard time limit of 20s and was killed"
    assert stored.lease_expires_at is None and stored.completed_at is not None
    assert ScheduledTask.objects.get(pk=task.pk).run_count == 1
    # A later report for the same attempt changes nothing.
    run_task.on_failure(TimeLimitExceeded(20.0), "celery-id", (), kwargs, None)
    assert TaskExecution.objects.get(pk=execution.pk).logs == stored.logs


def test_the_soft_time_limit_interrupts_the_attempt_and_the_retry_policy_applies(
    user: Any, conf: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery.exceptions import SoftTimeLimitExceeded

    def too_slow(action: Any, ctx: Any) -> Any:
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(executions, "run_action", too_slow)
    task = webhook_task(
        user, "https://example.com/slow", retry_policy={"maxRetries": 1, "jitter": 0}
    )
    claimed = executions.execution_claim(execution_id=str(queued(task).pk), attempt=1, worker="a:1")
    assert claimed is not None
    outcome = executions.execution_run(execution=claimed)
    assert outcome == executions.Outcome(status=ExecutionStatus.RETRYING, retry_in=60.0)
    stored = TaskExecution.objects.get(pk=claimed.pk)
    assert stored.error == "the action ran past its time limit and was interrupted"


def _postgresql_only() -> None:
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("POSTGRESQL ONLY: row locks seen from pg_stat_activity")


def test_a_usual_outcome_is_one_statement_with_the_counters(user: Any) -> None:
    """A recurring task's run that nobody listens to: its outcome and its task's counters
    are one statement on PostgreSQL (one round trip instead of four, atomic by itself);
    on SQLite one transaction of two statements."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    task = webhook_task(user, "https://example.com/x")
    claimed = claim(queued(task), 1, "a:1")
    assert claimed is not None
    with CaptureQueriesContext(connection) as queries:
        outcome = executions.execution_finish(
            execution=claimed,
            status=ExecutionStatus.COMPLETED,
            logs=[executions.log_entry("done")],
            started=0.0,
            result={"ok": True},
        )
    assert outcome.status == ExecutionStatus.COMPLETED
    statements = [q for q in queries.captured_queries if "SAVEPOINT" not in (q["sql"] or "")]
    assert len(statements) == (1 if connection.vendor == "postgresql" else 2)
    stored = TaskExecution.objects.get(pk=claimed.pk)
    assert (stored.status, stored.result) == (ExecutionStatus.COMPLETED, {"ok": True})
    assert messages_of(stored)[-1] == "done"
    task.refresh_from_db()
    assert (task.run_count, task.last_run) == (1, claimed.started_at)


@pytest.mark.django_db(transaction=True)
def test_a_task_saved_in_the_instant_of_the_outcome_still_counts_the_run(user: Any) -> None:
    """The task's row is saved (committed) while the outcome's counters wait for its lock:
    they are then added to the row as it is now, the edit kept."""
    import threading

    from django.db import connection, connections, transaction

    _postgresql_only()
    task = webhook_task(user, "https://example.com/x")
    claimed = claim(queued(task), 1, "a:1")
    assert claimed is not None
    locked, release = threading.Event(), threading.Event()

    def edit() -> None:
        try:
            with transaction.atomic():
                row = ScheduledTask.objects.select_for_update().get(pk=task.pk)
                row.description = "edited"
                row.save(update_fields=["description"])
                locked.set()
                release.wait(10)
        finally:
            connections.close_all()

    editor = threading.Thread(target=edit)
    editor.start()
    assert locked.wait(10)
    outcomes: list[Any] = []

    def finish() -> None:
        try:
            outcomes.append(
                executions.execution_finish(
                    execution=claimed, status=ExecutionStatus.COMPLETED, logs=[], started=0.0
                )
            )
        finally:
            connections.close_all()

    finisher = threading.Thread(target=finish)
    finisher.start()
    with connection.cursor() as cursor:  # the counters wait for the task's lock
        for _ in range(100):
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE 'WITH done AS%%'"
            )
            if cursor.fetchone()[0]:
                break
            threading.Event().wait(0.05)
        else:
            pytest.fail("the outcome's counters never waited for the task's lock")
    release.set()
    editor.join(10)
    finisher.join(10)
    assert [o.status for o in outcomes] == [ExecutionStatus.COMPLETED]
    assert TaskExecution.objects.get(pk=claimed.pk).status == ExecutionStatus.COMPLETED
    stored = ScheduledTask.objects.get(pk=task.pk)
    assert (stored.description, stored.run_count) == ("edited", 1)
