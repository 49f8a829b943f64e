"""Operators' maintenance commands (cleanup_executions, export_tasks, import_tasks,
backfill_task) and the guide's PostgreSQL cleanup functions."""

from __future__ import annotations

import io
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, PeriodicTask, PeriodicTasks

from tasks_app.conf import BEAT_ENTRY_PREFIX, RUN_TASK_NAME
from tasks_app.models import (
    ExecutionStatus,
    ExecutionTrigger,
    Report,
    ScheduledTask,
    TaskExecution,
    TaskMailbox,
    TaskStatus,
    TaskWebhook,
    WebhookDelivery,
)
from tasks_app.services import executions
from tasks_app.services.definitions import task_create
from tasks_app.services.maintenance import tasks_export
from tests.broker import published
from tests.services import unavailable

pytestmark = pytest.mark.django_db

WEBHOOK = {"type": "webhook", "url": "https://example.com/hook"}
RUNTIME_KEYS = {
    *("id", "status", "lastRun", "nextRun", "runCount", "createdAt", "updatedAt"),
    "emailAddress",
}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(*args: str, stderr: io.StringIO | None = None) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=stderr or io.StringIO())
    return out.getvalue()


def recurring(owner: Any, name: str = "hourly", **fields: Any) -> ScheduledTask:
    fields.setdefault("cron", "0 * * * *")
    return task_create(owner=owner, name=name, type="recurring", action=WEBHOOK, **fields)


def one_time(owner: Any, name: str = "once", **fields: Any) -> ScheduledTask:
    fields.setdefault("run_at", timezone.now() + timedelta(days=1))
    return task_create(owner=owner, name=name, type="one-time", action=WEBHOOK, **fields)


def execution(task: ScheduledTask, status: str, days_ago: float) -> TaskExecution:
    """An execution queued (and, if finished, completed) ``days_ago`` days ago."""
    made = TaskExecution.objects.create(task=task, trigger=ExecutionTrigger.MANUAL, status=status)
    at = timezone.now() - timedelta(days=days_ago)
    finished = status in {"completed", "failed", "skipped"}
    TaskExecution.objects.filter(pk=made.pk).update(
        queued_at=at, completed_at=at + timedelta(seconds=5) if finished else None
    )
    return made


def delivery(webhook: TaskWebhook, name: str, days_ago: float, **fields: Any) -> WebhookDelivery:
    made = WebhookDelivery.objects.create(webhook=webhook, delivery_id=name, **fields)
    at = timezone.now() - timedelta(days=days_ago)
    WebhookDelivery.objects.filter(pk=made.pk).update(received_at=at)
    return made


def remaining(task: ScheduledTask) -> set[Any]:
    return set(TaskExecution.objects.filter(task=task).values_list("pk", flat=True))


# --- cleanup_executions -----------------------------------------------------------------------


def test_cleanup_keeps_the_newest_per_task_and_everything_recent(user: Any) -> None:
    task, small = recurring(user), recurring(user, name="small")
    recent = [execution(task, "completed", days) for days in (1, 2)]
    old = [
        execution(task, status, days)
        for status, days in [
            ("completed", 40),
            ("failed", 41),
            ("skipped", 42),
            ("completed", 43),
            ("completed", 44),
        ]
    ]
    waiting = [execution(task, status, 50) for status in ("queued", "running", "retrying")]
    few = [execution(small, "completed", 60) for _ in range(2)]
    hook = TaskWebhook.objects.create(task=task, webhook_id="wh-1", secret="s")
    stale = delivery(hook, "stale", 31)
    fresh = delivery(hook, "fresh", 2, execution=old[1])
    report = Report.objects.create(
        owner=user, task=task, execution=old[1], title="r", html="", markdown=""
    )

    out = run("cleanup_executions", "--keep", "3", "--older-than-days", "30", "--batch", "2")

    assert "Deleted 4 executions and 1 webhook deliveries" in out
    kept = {*recent, old[0], *waiting}  # newest 3 are recent[0], recent[1], old[0]
    assert remaining(task) == {e.pk for e in kept}
    assert remaining(small) == {e.pk for e in few}  # fewer than --keep: all stay
    assert set(WebhookDelivery.objects.values_list("pk", flat=True)) == {fresh.pk}
    assert not WebhookDelivery.objects.filter(pk=stale.pk).exists()
    fresh.refresh_from_db()
    report.refresh_from_db()
    assert fresh.execution is None and report.execution is None  # SET_NULL, rows stay

    # Beyond the newest 1 but within 30 days: recent[1] stays; old[0] goes (and small's older).
    assert "Deleted 2 executions" in run("cleanup_executions", "--keep", "1")
    assert remaining(task) == {e.pk for e in [*recent, *waiting]}
    assert remaining(small) == {few[1].pk}


def test_cleanup_never_deletes_unfinished_executions(user: Any) -> None:
    task = recurring(user)
    waiting = [execution(task, status, 90) for status in ("queued", "running", "retrying")]
    done = execution(task, "completed", 90)

    out = run("cleanup_executions", "--keep", "0", "--older-than-days", "0")

    assert "Deleted 1 executions" in out
    assert remaining(task) == {e.pk for e in waiting}
    assert not TaskExecution.objects.filter(pk=done.pk).exists()


def test_cleanup_dry_run_deletes_nothing(user: Any) -> None:
    task = recurring(user)
    for days in (40, 41, 42):
        execution(task, "completed", days)
    delivery(TaskWebhook.objects.create(task=task, webhook_id="wh", secret="s"), "d", 40)

    out = run("cleanup_executions", "--keep", "1", "--older-than-days", "30", "--dry-run")

    assert "Would delete 2 executions and 1 webhook deliveries" in out
    assert TaskExecution.objects.count() == 3 and WebhookDelivery.objects.count() == 1


def test_cleanup_draws_a_progress_bar_only_on_a_terminal(user: Any) -> None:
    task = recurring(user)
    for days in (40, 41):
        execution(task, "completed", days)
    piped, terminal, quiet = io.StringIO(), Terminal(), Terminal()
    run("cleanup_executions", "--keep", "0", "--dry-run", stderr=piped)
    run("cleanup_executions", "--keep", "0", stderr=terminal)
    run("cleanup_executions", "--keep", "0", "--no-progress", stderr=quiet)
    assert piped.getvalue() == "" and quiet.getvalue() == ""
    assert "executions: 100%" in terminal.getvalue()


def test_cleanup_refuses_negative_options() -> None:
    with pytest.raises(CommandError, match="keep"):
        run("cleanup_executions", "--keep", "-1")


# --- the guide's PostgreSQL functions ---------------------------------------------------------

# Every foreign key into the tables the SQL functions delete from, as those functions
# handle it (Django emulates on_delete, so the SQL must): add new ones to migration 0004.
REFERENCES_HANDLED_IN_SQL = {
    ("task_executions", "task_id"),
    ("task_webhooks", "task_id"),
    ("task_mailboxes", "task_id"),
    ("reports", "task_id"),
    ("reports", "execution_id"),
    ("webhook_deliveries", "execution_id"),
    ("webhook_deliveries", "webhook_id"),
}


def test_sql_functions_handle_every_reference_to_the_tables_they_delete_from() -> None:
    targets = {ScheduledTask, TaskExecution, TaskWebhook, TaskMailbox}
    found = {
        (model._meta.db_table, field.column)
        for model in apps.get_models(include_auto_created=True)
        for field in model._meta.concrete_fields
        if field.is_relation and field.related_model in targets
    }
    assert found == REFERENCES_HANDLED_IN_SQL, (
        "a foreign key was added or removed: update cleanup_old_executions / "
        "cleanup_completed_tasks (tasks_app/migrations/0004_cleanup_functions.py) in a new "
        "migration, then this list"
    )


@pytest.fixture
def postgresql() -> None:
    if connection.vendor == "postgresql":
        return
    if os.environ.get("SCHEDULER_TEST_DATABASE") == "sqlite":
        pytest.skip(
            "POSTGRESQL ONLY: the guide's SQL cleanup functions exist only on PostgreSQL, "
            "and SCHEDULER_TEST_DATABASE=sqlite runs this suite on SQLite"
        )
    unavailable(
        "the unit suite is running on SQLite, where the guide's SQL cleanup functions do not exist",
        remedy="start PostgreSQL at 127.0.0.1:5432 to run this test",
        label="POSTGRESQL ONLY",
    )


def sql(statement: str) -> Any:
    with connection.cursor() as cursor:
        cursor.execute(statement)
        value = cursor.fetchone()[0]
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # deferred foreign keys hold now
    return value


def test_cleanup_old_executions_function(user: Any, postgresql: None) -> None:
    task, other = recurring(user), recurring(user, name="other")
    finished = [execution(task, "completed", days) for days in (1, 2, 3, 4)]
    waiting = execution(task, "queued", 9)
    lone = execution(other, "failed", 100)
    hook = TaskWebhook.objects.create(task=task, webhook_id="wh", secret="s")
    replay = delivery(hook, "d", 1, execution=finished[3])
    report = Report.objects.create(
        owner=user, task=task, execution=finished[2], title="r", html="", markdown=""
    )

    assert sql("SELECT cleanup_old_executions(2)") == 2

    assert remaining(task) == {finished[0].pk, finished[1].pk, waiting.pk}
    assert remaining(other) == {lone.pk}
    replay.refresh_from_db()
    report.refresh_from_db()
    assert replay.execution is None and report.execution is None
    assert sql("SELECT cleanup_old_executions(2)") == 0


def test_cleanup_completed_tasks_function_removes_tasks_and_their_beat_rows(
    user: Any, postgresql: None
) -> None:
    old = timezone.now() - timedelta(days=40)
    done = one_time(user, name="done")
    beat_name = f"{BEAT_ENTRY_PREFIX}{done.pk}"
    clocked = PeriodicTask.objects.get(name=beat_name).clocked_id
    # Finished long ago, its beat row still there (as if left over): all of it must go.
    ScheduledTask.objects.filter(pk=done.pk).update(status=TaskStatus.COMPLETED, updated_at=old)
    run_of_done = execution(done, "completed", 40)
    hook = TaskWebhook.objects.create(task=done, webhook_id="wh", secret="s")
    delivery(hook, "d", 40, execution=run_of_done)
    TaskMailbox.objects.create(task=done, local_part="done-box")
    report = Report.objects.create(
        owner=user, task=done, execution=run_of_done, title="r", html="", markdown=""
    )
    failed = one_time(user, name="failed")
    ScheduledTask.objects.filter(pk=failed.pk).update(status=TaskStatus.FAILED, updated_at=old)
    recent = one_time(user, name="recent")
    ScheduledTask.objects.filter(pk=recent.pk).update(status=TaskStatus.COMPLETED)
    active = recurring(user)
    ScheduledTask.objects.filter(pk=active.pk).update(updated_at=old)
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": old})

    assert sql("SELECT cleanup_completed_tasks(30)") == 2

    assert set(ScheduledTask.objects.values_list("name", flat=True)) == {"recent", "hourly"}
    assert not PeriodicTask.objects.filter(name=beat_name).exists()
    assert PeriodicTask.objects.filter(name=f"{BEAT_ENTRY_PREFIX}{active.pk}").exists()
    assert ClockedSchedule.objects.filter(pk=clocked).exists()  # shared rows stay
    assert PeriodicTasks.objects.get(ident=1).last_update > old
    assert not TaskExecution.objects.filter(pk=run_of_done.pk).exists()
    assert not TaskWebhook.objects.exists() and not WebhookDelivery.objects.exists()
    assert not TaskMailbox.objects.exists()
    report.refresh_from_db()
    assert report.task is None and report.execution is None
    assert sql("SELECT cleanup_completed_tasks(30)") == 0


# --- export_tasks / import_tasks ----------------------------------------------------------------


def definitions_of(owner: Any) -> list[dict[str, Any]]:
    tasks = tasks_export(owner=owner)["tasks"]
    return sorted(({**t, "userId": None} for t in tasks), key=lambda t: t["name"])


def test_export_then_import_reproduces_the_definitions(
    user: Any, django_user_model: Any, tmp_path: Path
) -> None:
    bob = django_user_model.objects.create(username="bob")
    carol = django_user_model.objects.create(username="carol")
    recurring(
        user,
        name="weekdays",
        cron="0 9 * * 1-5",
        timezone="Europe/Berlin",
        description="morning ping",
        retry_policy={"maxRetries": 3, "backoffMs": 1000},
        conditions=[{"type": "time", "field": "time", "operator": "greater", "value": "08:00"}],
        notification={"onFailure": True, "channels": ["email"]},
    )
    one_time(user, name="later")
    task_create(
        owner=user, name="hooked", type="trigger", trigger={"type": "webhook"}, action=WEBHOOK
    )
    recurring(carol, name="not alice's")
    path = tmp_path / "tasks.json"

    run("export_tasks", "--user", "alice", "--output", str(path))
    document = json.loads(path.read_text())
    assert document["version"] == 1 and document["exportedAt"]
    assert sorted(t["name"] for t in document["tasks"]) == ["hooked", "later", "weekdays"]
    assert all(not RUNTIME_KEYS & set(t) for t in document["tasks"])
    assert path.stat().st_mode & 0o077 == 0  # actions may hold credentials

    out = run("import_tasks", str(path), "--user", "bob")

    assert "Imported 3 tasks for bob (0 skipped)" in out
    assert definitions_of(bob) == definitions_of(user)
    weekdays = ScheduledTask.objects.get(owner=bob, name="weekdays")
    beat = PeriodicTask.objects.get(name=f"{BEAT_ENTRY_PREFIX}{weekdays.pk}")
    assert beat.enabled and beat.crontab is not None
    assert str(beat.crontab.timezone) == "Europe/Berlin" and beat.crontab.hour == "9"
    later = ScheduledTask.objects.get(owner=bob, name="later")
    assert PeriodicTask.objects.get(name=f"{BEAT_ENTRY_PREFIX}{later.pk}").clocked is not None
    assert ScheduledTask.objects.filter(owner=user).count() == 3


def test_import_with_one_bad_task_imports_nothing(
    user: Any, django_user_model: Any, tmp_path: Path
) -> None:
    bob = django_user_model.objects.create(username="bob")
    good = {"name": "ok", "type": "recurring", "schedule": {"cron": "0 * * * *"}, "action": WEBHOOK}
    document = {
        "version": 1,
        "tasks": [
            good,
            {**good, "name": "bad cron", "schedule": {"cron": "61 * * * *"}},
            {"name": "no action", "type": "recurring", "schedule": {"cron": "0 * * * *"}},
            {**good, "action": {"type": "webhook", "url": "not a url"}},
        ],
    }
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps(document))
    beat_rows = PeriodicTask.objects.count()
    err = io.StringIO()

    with pytest.raises(CommandError, match="nothing was imported"):
        run("import_tasks", str(path), "--user", "bob", stderr=err)

    lines = err.getvalue()
    assert "tasks[1].schedule.cron: " in lines
    assert "tasks[2].action: is required" in lines
    assert "tasks[3].action.url: " in lines
    assert "tasks[0]" not in lines
    assert not ScheduledTask.objects.filter(owner=bob).exists()
    assert PeriodicTask.objects.count() == beat_rows


def test_import_past_one_time_tasks_paused_and_dry_run(
    user: Any, django_user_model: Any, tmp_path: Path
) -> None:
    bob = django_user_model.objects.create(username="bob")
    past = (timezone.now() - timedelta(days=1)).isoformat()
    soon = (timezone.now() + timedelta(days=1)).isoformat()
    tasks = [
        {"name": "gone", "type": "one-time", "schedule": {"at": past}, "action": WEBHOOK},
        {"name": "soon", "type": "one-time", "schedule": {"at": soon}, "action": WEBHOOK},
    ]
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps(tasks))  # a bare list of tasks is accepted too
    err = io.StringIO()

    with pytest.raises(CommandError):
        run("import_tasks", str(path), "--user", "bob", stderr=err)
    assert "tasks[0].schedule.at: is in the past" in err.getvalue()

    out = run("import_tasks", str(path), "--user", "bob", "--skip-past", "--dry-run")
    assert "Would import 1 tasks for bob (1 skipped)" in out
    assert not ScheduledTask.objects.filter(owner=bob).exists()

    run("import_tasks", str(path), "--user", "bob", "--skip-past", "--paused")
    imported = ScheduledTask.objects.get(owner=bob)
    assert imported.name == "soon" and imported.status == TaskStatus.PAUSED
    assert not PeriodicTask.objects.get(name=f"{BEAT_ENTRY_PREFIX}{imported.pk}").enabled


def test_import_refuses_unknown_users_and_files_that_are_not_exports(
    user: Any, tmp_path: Path
) -> None:
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps({"version": 1, "tasks": []}))
    with pytest.raises(CommandError, match="no user named 'nobody'"):
        run("import_tasks", str(path), "--user", "nobody")
    path.write_text(json.dumps({"tasks": "no"}))
    with pytest.raises(CommandError, match="export_tasks document"):
        run("import_tasks", str(path), "--user", "alice")


# --- backfill_task ----------------------------------------------------------------------------

START = datetime(2024, 1, 1, tzinfo=UTC)


def backfill(task: ScheduledTask, *args: str) -> str:
    return run(
        "backfill_task",
        str(task.pk),
        "--start",
        "2024-01-01T00:00:00Z",
        "--end",
        "2024-01-01T06:00:00Z",
        *args,
    )


def test_backfill_queues_exactly_the_missing_occurrences_once(
    user: Any, memory_broker: Any, django_capture_on_commit_callbacks: Any
) -> None:
    task = recurring(user)
    hours = [START + timedelta(hours=h) for h in range(6)]
    recorded = executions.execution_for_occurrence(task_id=task.pk, scheduled_for=hours[2])
    assert recorded is not None

    with django_capture_on_commit_callbacks(execute=True):
        out = backfill(task)

    assert "6 occurrences in the window: 1 already recorded, queued 5." in out
    made = TaskExecution.objects.filter(task=task, trigger=ExecutionTrigger.SCHEDULED)
    assert sorted(made.values_list("scheduled_for", flat=True)) == hours
    new = {str(e.pk) for e in made.exclude(pk=recorded.pk)}
    messages = published(memory_broker)
    assert sorted(m[1]["execution_id"] for m in messages) == sorted(new)
    assert {(name, kwargs["attempt"]) for name, kwargs in messages} == {(RUN_TASK_NAME, 1)}
    assert set(made.values_list("status", flat=True)) == {ExecutionStatus.QUEUED}

    with django_capture_on_commit_callbacks(execute=True) as again:
        out = backfill(task)
    assert "6 occurrences in the window: 6 already recorded, queued 0." in out
    assert again == [] and published(memory_broker) == []


def test_backfill_reads_naive_times_in_the_tasks_timezone_and_dry_run_records_nothing(
    user: Any,
) -> None:
    task = recurring(user, cron="0 9 * * *", timezone="Europe/Berlin")
    out = run(
        "backfill_task",
        str(task.pk),
        "--start",
        "2024-03-01",
        "--end",
        "2024-03-04T08:00",
        "--dry-run",
    )
    # 09:00 Berlin on 1, 2 and 3 March; the 4th's 09:00 is after the 08:00 end.
    assert "3 occurrences in the window: 0 already recorded, would queue 3." in out
    assert not TaskExecution.objects.exists()


def test_backfill_refuses_future_windows_big_windows_and_other_tasks(user: Any) -> None:
    task = recurring(user)
    now = timezone.now()
    with pytest.raises(CommandError, match="future"):
        run(
            "backfill_task",
            str(task.pk),
            "--start",
            (now - timedelta(hours=3)).isoformat(),
            "--end",
            (now + timedelta(hours=1)).isoformat(),
        )
    with pytest.raises(CommandError, match="more than 5 occurrences"):
        backfill(task, "--max", "5")
    with pytest.raises(CommandError, match="only recurring tasks"):
        backfill(one_time(user))
    with pytest.raises(CommandError, match="no task"):
        run(
            "backfill_task",
            "00000000-0000-0000-0000-000000000000",
            "--start",
            "2024-01-01",
            "--end",
            "2024-01-02",
        )
    assert not TaskExecution.objects.exists()


def test_the_cleanup_is_scheduled_daily_by_default(settings: Any) -> None:
    from celery.schedules import crontab

    entry = settings.CELERY_BEAT_SCHEDULE["scheduler.cleanup-executions"]
    assert entry["task"] == "tasks_app.cleanup_executions"
    assert entry["schedule"] == crontab(minute="17", hour="3")
    assert (settings.SCHEDULER_CLEANUP_KEEP, settings.SCHEDULER_CLEANUP_OLDER_THAN_DAYS) == (
        100,
        30,
    )


@pytest.mark.django_db
def test_the_scheduled_cleanup_deletes_by_the_settings(settings: Any, user: Any) -> None:
    from tasks_app.models import ScheduledTask, TaskExecution
    from tasks_app.tasks import cleanup_executions

    settings.SCHEDULER_CLEANUP_KEEP, settings.SCHEDULER_CLEANUP_OLDER_THAN_DAYS = 2, 1
    task = ScheduledTask.objects.create(
        owner=user,
        name="c",
        type="trigger",
        trigger={"type": "event", "config": {"event": "c"}},
        action={"type": "webhook", "url": "https://example.com/h"},
    )
    old = timezone.now() - timedelta(days=3)
    for _ in range(5):
        TaskExecution.objects.create(
            task=task, trigger="manual", status="completed", completed_at=old
        )
    TaskExecution.objects.update(queued_at=old)
    assert cleanup_executions.apply().get() == {"executions": 3, "deliveries": 0}
    assert TaskExecution.objects.count() == 2
    settings.SCHEDULER_CLEANUP_KEEP = -1  # turned off
    assert cleanup_executions.apply().get() == {"executions": 0, "deliveries": 0}
    assert TaskExecution.objects.count() == 2
