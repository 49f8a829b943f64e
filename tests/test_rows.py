"""tasks_app.rows: the worker's single-row statements store and read what the ORM does
(on PostgreSQL and, with SCHEDULER_TEST_DATABASE=sqlite, on SQLite)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection

from tasks_app import rows
from tasks_app.models import (
    ExecutionStatus,
    ScheduledTask,
    TaskExecution,
    TaskWebhook,
)
from tasks_app.services.definitions import task_create
from tests.services import another_session

pytestmark = pytest.mark.django_db

AT = datetime(2031, 1, 6, 9, 30, 15, 123456, tzinfo=UTC)


def _task(owner: Any) -> ScheduledTask:
    return task_create(
        owner=owner,
        name="rows",
        type="trigger",
        trigger={"type": "event", "config": {"event": "rows.test"}},
        action={"type": "webhook", "url": "https://example.com/hook", "body": {"ü": [1, None]}},
    )


def _values(instance: Any) -> dict[str, Any]:
    return {f.attname: getattr(instance, f.attname) for f in type(instance)._meta.concrete_fields}


def test_get_reads_every_field_as_the_orm_does(user: Any) -> None:
    task = _task(user)
    execution = TaskExecution.objects.create(
        task=task,
        trigger="manual",
        scheduled_for=AT,
        payload={"nested": {"list": [1, 2.5, "x", None, True]}},
        result="a plain string",
        logs=[{"at": AT.isoformat(), "message": "hi"}],
    )
    read = rows.get(TaskExecution, {"pk": execution.pk})
    assert read is not None and not read._state.adding
    assert _values(read) == _values(TaskExecution.objects.get(pk=execution.pk))
    assert read.scheduled_for == AT and read.scheduled_for.tzinfo is not None
    assert _values(rows.get(ScheduledTask, {"pk": task.pk})) == _values(
        ScheduledTask.objects.get(pk=task.pk)
    )
    assert rows.get(TaskExecution, {"pk": task.pk}) is None


def test_encrypted_fields_come_back_decrypted(user: Any) -> None:
    hook = TaskWebhook.objects.create(task=_task(user), webhook_id="w1", secret="s3cret")
    with connection.cursor() as cursor:
        cursor.execute("SELECT secret FROM task_webhooks")
        (stored,) = cursor.fetchone()
    assert "s3cret" not in stored
    read = rows.get(TaskWebhook, {"pk": hook.pk})
    assert read is not None and read.secret == "s3cret" and read.previous_secret is None


def test_update_returning_sets_values_and_matches_only_its_conditions(
    user: Any, django_assert_num_queries: Any
) -> None:
    task = _task(user)
    execution = TaskExecution.objects.create(task=task, trigger="manual")
    wanted = {
        "pk": execution.pk,
        "status": rows.In([ExecutionStatus.QUEUED, ExecutionStatus.RETRYING]),
        "attempt": 0,
        "current_step": None,
    }
    changes = {"status": ExecutionStatus.RUNNING, "attempt": 1, "started_at": AT, "worker": "w"}
    taken = rows.update_returning(TaskExecution, wanted, changes, related="task")
    assert taken is not None and taken.status == "running" and taken.started_at == AT
    assert _values(taken) == _values(TaskExecution.objects.get(pk=execution.pk))
    stored_task = _values(ScheduledTask.objects.get(pk=task.pk))
    with django_assert_num_queries(0):  # it came with the row
        assert _values(taken.task) == stored_task
    # the same conditions no longer hold: nothing matches, nothing changes
    assert rows.update_returning(TaskExecution, wanted, {"worker": "other"}) is None
    assert rows.update_returning(TaskExecution, wanted, {"worker": "x"}, related="task") is None
    assert rows.update(TaskExecution, wanted, {"worker": "other"}) == 0
    assert TaskExecution.objects.get(pk=execution.pk).worker == "w"


def test_conditions_in_not_null_and_pairs(user: Any) -> None:
    task = _task(user)
    listening = [("owner_id", user.pk), ("listens_for", "rows.test")]
    assert rows.exists(ScheduledTask, [*listening, ("listens_for", rows.Not(""))])
    assert not rows.exists(ScheduledTask, [*listening, ("listens_for", rows.Not("rows.test"))])
    assert rows.exists(ScheduledTask, {"pk": task.pk, "run_at": None})
    assert not rows.exists(ScheduledTask, {"pk": task.pk, "status": rows.In(["paused"])})


def test_add_counts_in_sql_and_updated_at_compares_as_read(user: Any) -> None:
    task = _task(user)
    as_read = ScheduledTask.objects.get(pk=task.pk).updated_at
    same = {"pk": task.pk, "updated_at": as_read}
    for _ in range(2):
        assert rows.update(ScheduledTask, same, {"run_count": rows.Add(1), "last_run": AT}) == 1
    stored = ScheduledTask.objects.get(pk=task.pk)
    assert (stored.run_count, stored.last_run) == (2, AT)
    stored.save(update_fields=["name"])  # a save moves updated_at
    assert rows.update(ScheduledTask, same, {"run_count": rows.Add(1)}) == 0
    assert not rows.exists(ScheduledTask, same)


@pytest.mark.parametrize("before", [[{"message": "one"}], None, {"not": "a list"}])
def test_append_keeps_what_is_there_and_starts_a_list_over_anything_else(
    user: Any, before: Any
) -> None:
    execution = TaskExecution.objects.create(task=_task(user), trigger="manual", logs=[])
    if before is None:  # JSON null (the column is NOT NULL)
        with connection.cursor() as cursor:
            cursor.execute("UPDATE task_executions SET logs = 'null'")
    else:
        TaskExecution.objects.filter(pk=execution.pk).update(logs=before)
    lines = [{"message": "two", "at": "t"}, {"message": "ü \"quoted\" '%s'"}]
    rows.update(TaskExecution, {"pk": execution.pk}, {"logs": rows.Append(lines)})
    kept = before if isinstance(before, list) else []
    assert TaskExecution.objects.get(pk=execution.pk).logs == [*kept, *lines]
    rows.update(TaskExecution, {"pk": execution.pk}, {"logs": rows.Append([])})
    assert TaskExecution.objects.get(pk=execution.pk).logs == [*kept, *lines]


def test_values_pass_through_their_fields(user: Any) -> None:
    """JSON, None and datetimes are stored as the ORM stores them."""
    execution = TaskExecution.objects.create(task=_task(user), trigger="manual")
    later = AT + timedelta(days=1)
    rows.update(
        TaskExecution,
        {"pk": str(execution.pk)},  # a UUID as text, as messages carry it
        {"result": {"k": ["v", 1]}, "error": "", "next_attempt_at": later, "completed_at": None},
    )
    stored = TaskExecution.objects.get(pk=execution.pk)
    assert (stored.result, stored.next_attempt_at, stored.completed_at) == (
        {"k": ["v", 1]},
        later,
        None,
    )
    assert TaskExecution.objects.filter(pk=execution.pk, next_attempt_at=later).exists()
    rows.update(TaskExecution, {"pk": execution.pk}, {"result": None})
    assert TaskExecution.objects.filter(pk=execution.pk, result__isnull=True).exists()


def test_update_and_exists_answers_in_the_same_statement(
    user: Any, django_assert_num_queries: Any
) -> None:
    task = _task(user)
    execution = TaskExecution.objects.create(task=task, trigger="manual")
    listening = (ScheduledTask, [("owner_id", user.pk), ("listens_for", "rows.test")])
    nobody = (ScheduledTask, [("owner_id", user.pk), ("listens_for", "other")])
    with django_assert_num_queries(1):
        assert rows.update_and_exists(
            TaskExecution, {"pk": execution.pk}, {"worker": "a"}, exists=listening
        ) == (1, True)
    assert rows.update_and_exists(
        TaskExecution, {"pk": execution.pk}, {"worker": "b"}, exists=nobody
    ) == (1, False)
    assert rows.update_and_exists(
        TaskExecution, {"pk": execution.pk, "worker": "a"}, {"worker": "c"}, exists=listening
    ) == (0, False)
    assert TaskExecution.objects.get(pk=execution.pk).worker == "b"


@pytest.mark.parametrize("prepared", [True, False])
def test_postgresql_prepares_these_statements_once_per_connection(
    user: Any, settings: Any, prepared: bool
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("POSTGRESQL ONLY: prepared statements")
    settings.SCHEDULER_PREPARED_STATEMENTS = prepared
    task = _task(user)
    for _ in range(3):
        execution = TaskExecution.objects.create(task=task, trigger="manual")
        assert rows.update(TaskExecution, {"pk": execution.pk}, {"worker": "w"}) == 1
    TaskExecution.objects.filter(task=task).count()  # Django's own, inline values
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        statements = [text for (text,) in cursor.fetchall()]
    ours = [text for text in statements if text.startswith('UPDATE "task_executions"')]
    assert len(ours) == (1 if prepared else 0)
    assert not [text for text in statements if "COUNT(" in text.upper()]


@pytest.mark.django_db(transaction=True)
def test_prepared_statements_survive_a_migration_that_changes_their_columns(
    user: Any, settings: Any
) -> None:
    """A column type changed under a prepared statement (a migration while workers run):
    outside a transaction the statement is prepared again; inside one, the connection is
    dropped with an OperationalError (what execution_finish retries), and the retry works."""
    from django.db import OperationalError, transaction

    if connection.vendor != "postgresql":
        pytest.skip("POSTGRESQL ONLY: prepared statements")
    settings.SCHEDULER_PREPARED_STATEMENTS = True
    execution = TaskExecution.objects.create(task=_task(user), trigger="manual")
    wanted = {"pk": execution.pk}

    def migrate(length: int) -> None:
        with another_session() as other:
            other.execute(f"ALTER TABLE task_executions ALTER COLUMN worker TYPE varchar({length})")

    assert rows.update_returning(TaskExecution, wanted, {"worker": "a"}) is not None
    try:
        migrate(300)
        taken = rows.update_returning(TaskExecution, wanted, {"worker": "b"})
        assert taken is not None and taken.worker == "b"
        migrate(400)
        with pytest.raises(OperationalError), transaction.atomic():
            rows.update_returning(TaskExecution, wanted, {"worker": "c"})
        taken = rows.update_returning(TaskExecution, wanted, {"worker": "d"})
        assert taken is not None and taken.worker == "d"
    finally:
        connection.close()
        migrate(255)
