"""Definition services (create, update, pause, resume, delete), their validation keyed by
the guide's paths, and the database constraints that hold even when validation is bypassed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.forms import modelform_factory
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from tasks_app.models import (
    ExecutionStatus,
    ExecutionTrigger,
    ScheduledTask,
    TaskExecution,
    TaskStatus,
)
from tasks_app.services.definitions import (
    task_create,
    task_delete,
    task_pause,
    task_resume,
    task_update,
)

pytestmark = pytest.mark.django_db

WEBHOOK = {"type": "webhook", "url": "https://example.com/hook"}


def recurring(owner: Any, **fields: Any) -> ScheduledTask:
    fields.setdefault("cron", "*/5 * * * *")
    return task_create(owner=owner, name="every five", type="recurring", action=WEBHOOK, **fields)


def one_time(owner: Any, **fields: Any) -> ScheduledTask:
    fields.setdefault("run_at", timezone.now() + timedelta(hours=1))
    return task_create(owner=owner, name="once", type="one-time", action=WEBHOOK, **fields)


def errors_of(excinfo: pytest.ExceptionInfo[ValidationError]) -> dict[str, list[str]]:
    return excinfo.value.message_dict


def assert_nothing_stored() -> None:
    assert ScheduledTask.objects.count() == 0
    assert PeriodicTask.objects.count() == 0


# --- create -----------------------------------------------------------------------------


def test_create_recurring_stores_every_field(user: Any) -> None:
    task = task_create(
        owner=user,
        name="  Daily report",
        type="recurring",
        action={"type": "webhook", "url": "https://example.com/r", "method": "put"},
        description="sends the report",
        cron="0 9 * * 1-5",
        timezone="Europe/Paris",
        retry_policy={"maxRetries": 3, "backoffMs": 500},
        notification={"onFailure": True, "channels": ["email"]},
        conditions=[{"type": "time", "operator": "greater", "value": "09:00"}],
    )

    stored = ScheduledTask.objects.get(pk=task.pk)
    assert stored.owner == user
    assert stored.name == "  Daily report"
    assert stored.description == "sends the report"
    assert stored.type == "recurring"
    assert stored.cron == "0 9 * * 1-5"
    assert stored.timezone == "Europe/Paris"
    assert stored.run_at is None
    assert stored.trigger is None
    assert stored.action == {"type": "webhook", "url": "https://example.com/r", "method": "put"}
    assert stored.retry_policy == {"maxRetries": 3, "backoffMs": 500}
    assert stored.notification == {"onFailure": True, "channels": ["email"]}
    assert stored.conditions == [{"type": "time", "operator": "greater", "value": "09:00"}]
    assert stored.status == TaskStatus.ACTIVE
    assert stored.run_count == 0
    assert stored.last_run is None
    assert stored.periodic_task_id is not None


def test_create_normalises_sunday_7_to_0(user: Any) -> None:
    task = recurring(user, cron="0  12 * * 7")
    assert ScheduledTask.objects.get(pk=task.pk).cron == "0 12 * * 0"


def test_create_one_time_and_trigger(user: Any) -> None:
    at = timezone.now() + timedelta(days=2)
    once = one_time(user, run_at=at)
    hook = task_create(
        owner=user,
        name="on hook",
        type="trigger",
        action=WEBHOOK,
        trigger={"type": "webhook", "config": {}},
    )
    assert ScheduledTask.objects.get(pk=once.pk).run_at == at
    assert ScheduledTask.objects.get(pk=hook.pk).trigger == {"type": "webhook", "config": {}}
    assert ScheduledTask.objects.count() == 2


def test_create_refuses_unknown_fields(user: Any) -> None:
    with pytest.raises(TypeError, match="unknown task fields: run_count, status"):
        task_create(
            owner=user,
            name="x",
            type="recurring",
            action=WEBHOOK,
            cron="* * * * *",
            status="paused",
            run_count=5,
        )
    assert_nothing_stored()


@pytest.mark.parametrize(
    ("fields", "path", "fragment"),
    [
        ({"type": "recurring", "cron": "61 * * * *"}, "schedule.cron", "not a valid cron"),
        (
            {"type": "recurring", "cron": "* * * *"},
            "schedule.cron",
            "exactly 5 fields (minute hour day month weekday), got 4",
        ),
        (
            {"type": "recurring", "cron": "0 0 30 2 *"},
            "schedule.cron",
            "day_of_month '30' never occurs in month_of_year '2'",
        ),
        ({"type": "recurring"}, "schedule.cron", "is required for a recurring task"),
        (
            {"type": "one-time", "run_at": datetime(2099, 1, 1, tzinfo=UTC), "cron": "* * * * *"},
            "schedule.cron",
            "only a recurring task has a cron",
        ),
        (
            {"type": "recurring", "cron": "* * * * *", "timezone": "Mars/Olympus"},
            "schedule.timezone",
            "'Mars/Olympus' is not an IANA timezone name",
        ),
        ({"type": "one-time"}, "schedule.at", "is required for a one-time task"),
        (
            {"type": "one-time", "run_at": datetime(2020, 1, 1, tzinfo=UTC)},
            "schedule.at",
            "must be in the future",
        ),
        (
            {"type": "one-time", "run_at": datetime(2099, 1, 1)},
            "schedule.at",
            "must be a date and time with a timezone offset",
        ),
        (
            {"type": "one-time", "run_at": "2099-01-01T00:00:00Z"},
            "schedule.at",
            "must be a date and time with a timezone offset",
        ),
        ({"type": "trigger"}, "trigger", "is required for a trigger task"),
        ({"type": "trigger", "trigger": {"type": "sms"}}, "trigger.type", "Input should be"),
        (
            {"type": "trigger", "trigger": {"type": "event", "extra": 1}},
            "trigger.extra",
            "Extra inputs are not permitted",
        ),
        (
            {"type": "recurring", "cron": "* * * * *", "trigger": {"type": "event"}},
            "trigger",
            "only a trigger task has a trigger",
        ),
        ({"type": "sometimes"}, "type", "must be one of one-time, recurring, trigger"),
        (
            {"type": "recurring", "cron": "* * * * *", "action": {"type": "run-code"}},
            "action.language",
            "Field required",
        ),
        (
            {"type": "recurring", "cron": "* * * * *", "action": {"type": "teleport"}},
            "action.type",
            "must be one of ai-prompt, send-email, webhook",
        ),
        (
            {"type": "recurring", "cron": "* * * * *", "action": "webhook"},
            "action",
            "must be an object with a 'type'",
        ),
        (
            {"type": "recurring", "cron": "* * * * *", "action": {"type": "webhook"}},
            "action.url",
            "Field required",
        ),
        (
            {
                "type": "recurring",
                "cron": "* * * * *",
                "action": {"type": "webhook", "url": "ftp://example.com/x"},
            },
            "action.url",
            "must be an absolute http:// or https:// URL",
        ),
        (
            {
                "type": "recurring",
                "cron": "* * * * *",
                "action": {"type": "webhook", "url": "https://e.com", "method": "BREW"},
            },
            "action.method",
            "Input should be",
        ),
        (
            {"type": "recurring", "cron": "* * * * *", "retry_policy": {"maxRetries": -1}},
            "retryPolicy.maxRetries",
            "greater than or equal to 0",
        ),
        (
            {"type": "recurring", "cron": "* * * * *", "retry_policy": {"maxRetries": 21}},
            "retryPolicy.maxRetries",
            "less than or equal to 20",
        ),
        (
            {"type": "recurring", "cron": "* * * * *", "retry_policy": {"retries": 2}},
            "retryPolicy.retries",
            "Extra inputs are not permitted",
        ),
        (
            {"type": "recurring", "cron": "* * * * *", "notification": {"channels": ["sms"]}},
            "notification.channels[0]",
            "Input should be 'email', 'webhook' or 'push'",
        ),
        (
            {
                "type": "recurring",
                "cron": "* * * * *",
                "conditions": [{"type": "time", "operator": "between"}, {"type": "x"}],
            },
            "conditions[1].operator",
            "Field required",
        ),
        (
            {"type": "recurring", "cron": "* * * * *", "conditions": {"type": "time"}},
            "conditions",
            "must be a list",
        ),
        ({"type": "recurring", "cron": "* * * * *", "name": "   "}, "name", "is required"),
        (
            {"type": "recurring", "cron": "* * * * *", "name": "n" * 201},
            "name",
            "must be at most 200 characters",
        ),
    ],
)
def test_create_invalid_names_the_path_and_stores_nothing(
    user: Any, fields: dict[str, Any], path: str, fragment: str
) -> None:
    fields = {"name": "bad", "action": WEBHOOK, **fields}
    with pytest.raises(ValidationError) as excinfo:
        task_create(owner=user, **fields)
    errors = errors_of(excinfo)
    assert path in errors, errors
    assert any(fragment in message for message in errors[path]), errors[path]
    assert_nothing_stored()


def test_create_reports_every_bad_path_at_once(user: Any) -> None:
    with pytest.raises(ValidationError) as excinfo:
        task_create(
            owner=user,
            name="",
            type="recurring",
            cron="bad",
            action={"type": "webhook", "url": "nope"},
            retry_policy={"maxRetries": 99},
            notification={"channels": ["email", "fax"]},
        )
    assert sorted(errors_of(excinfo)) == [
        "action.url",
        "name",
        "notification.channels[1]",
        "retryPolicy.maxRetries",
        "schedule.cron",
    ]
    assert_nothing_stored()


def test_bad_timezone_does_not_also_blame_the_cron(user: Any) -> None:
    with pytest.raises(ValidationError) as excinfo:
        recurring(user, cron="0 9 * * *", timezone="Europe/Nowhere")
    assert list(errors_of(excinfo)) == ["schedule.timezone"]


# --- update -----------------------------------------------------------------------------


def test_update_changes_only_named_fields(user: Any) -> None:
    task = recurring(user, description="keep me", retry_policy={"maxRetries": 1})
    task_update(task=task, name="renamed", cron="15 * * * *")
    stored = ScheduledTask.objects.get(pk=task.pk)
    assert stored.name == "renamed"
    assert stored.cron == "15 * * * *"
    assert stored.description == "keep me"
    assert stored.retry_policy == {"maxRetries": 1}
    assert stored.status == TaskStatus.ACTIVE


def test_update_invalid_keeps_stored_definition(user: Any) -> None:
    task = recurring(user, cron="0 8 * * *")
    periodic = PeriodicTask.objects.get(pk=task.periodic_task_id)
    with pytest.raises(ValidationError) as excinfo:
        task_update(task=task, cron="0 25 * * *", notification={"channels": ["pager"]})
    assert sorted(errors_of(excinfo)) == ["notification.channels[0]", "schedule.cron"]
    stored = ScheduledTask.objects.get(pk=task.pk)
    assert stored.cron == "0 8 * * *"
    assert stored.notification == {}
    after = PeriodicTask.objects.get(pk=periodic.pk)
    assert (after.crontab_id, after.enabled) == (periodic.crontab_id, True)


def test_update_run_at_into_the_past_is_refused(user: Any) -> None:
    task = one_time(user)
    with pytest.raises(ValidationError) as excinfo:
        task_update(task=task, run_at=timezone.now() - timedelta(seconds=1))
    assert errors_of(excinfo) == {"schedule.at": ["must be in the future"]}


def test_update_of_other_fields_does_not_recheck_a_past_run_at(user: Any) -> None:
    task = one_time(user)
    ScheduledTask.objects.filter(pk=task.pk).update(run_at=timezone.now() - timedelta(hours=1))
    task.refresh_from_db()
    task_update(task=task, description="edited later")
    assert ScheduledTask.objects.get(pk=task.pk).description == "edited later"


def test_update_refuses_non_editable_fields(user: Any) -> None:
    task = recurring(user)
    with pytest.raises(TypeError, match="unknown task fields: status"):
        task_update(task=task, status="completed")
    assert ScheduledTask.objects.get(pk=task.pk).status == TaskStatus.ACTIVE


@pytest.mark.parametrize("finished", [TaskStatus.COMPLETED, TaskStatus.FAILED])
def test_rescheduling_a_finished_one_time_task_rearms_it(user: Any, finished: str) -> None:
    task = one_time(user)
    task.status = finished
    task.save(update_fields=["status"])
    assert not PeriodicTask.objects.exists()
    later = timezone.now() + timedelta(days=1)
    task_update(task=task, run_at=later)
    stored = ScheduledTask.objects.get(pk=task.pk)
    assert stored.status == TaskStatus.ACTIVE
    assert stored.run_at == later
    assert stored.next_run == later
    assert PeriodicTask.objects.get(pk=stored.periodic_task_id).enabled is True


def test_editing_a_finished_one_time_task_without_new_time_keeps_it_finished(user: Any) -> None:
    task = one_time(user)
    task.status = TaskStatus.COMPLETED
    task.save(update_fields=["status"])
    task_update(task=task, description="notes")
    stored = ScheduledTask.objects.get(pk=task.pk)
    assert (stored.status, stored.periodic_task_id) == (TaskStatus.COMPLETED, None)


def test_change_type_from_recurring_to_trigger(user: Any) -> None:
    task = recurring(user)
    task_update(
        task=task, type="trigger", cron="", trigger={"type": "event", "config": {"event": "x"}}
    )
    stored = ScheduledTask.objects.get(pk=task.pk)
    assert (stored.type, stored.cron, stored.trigger) == (
        "trigger",
        "",
        {"type": "event", "config": {"event": "x"}},
    )


# --- pause / resume / delete --------------------------------------------------------------


def test_pause_and_resume(user: Any) -> None:
    task = recurring(user)
    task_pause(task=task)
    assert ScheduledTask.objects.get(pk=task.pk).status == TaskStatus.PAUSED
    task_pause(task=task)  # idempotent
    assert ScheduledTask.objects.get(pk=task.pk).status == TaskStatus.PAUSED
    task_resume(task=task)
    assert ScheduledTask.objects.get(pk=task.pk).status == TaskStatus.ACTIVE
    task_resume(task=task)
    assert ScheduledTask.objects.get(pk=task.pk).status == TaskStatus.ACTIVE


@pytest.mark.parametrize("status", [TaskStatus.COMPLETED, TaskStatus.FAILED])
def test_pause_and_resume_leave_finished_tasks_alone(user: Any, status: str) -> None:
    task = one_time(user)
    ScheduledTask.objects.filter(pk=task.pk).update(status=status)
    task.refresh_from_db()
    task_pause(task=task)
    assert ScheduledTask.objects.get(pk=task.pk).status == status
    task_resume(task=task)
    assert ScheduledTask.objects.get(pk=task.pk).status == status


def test_delete_removes_task_and_its_executions(user: Any) -> None:
    task = recurring(user)
    other = recurring(user)
    TaskExecution.objects.create(task=task, trigger=ExecutionTrigger.MANUAL)
    task_delete(task=task)
    assert list(ScheduledTask.objects.values_list("pk", flat=True)) == [other.pk]
    assert TaskExecution.objects.count() == 0


# --- model.clean() for admin forms ----------------------------------------------------------


def test_clean_maps_paths_to_model_fields(user: Any) -> None:
    task = ScheduledTask(
        owner=user,
        name="",
        type="recurring",
        cron="not cron",
        timezone="UTC",
        action={"type": "run-code", "language": "cobol", "code": "x"},
        retry_policy={"maxRetries": -3},
        notification={"channels": ["fax"]},
        conditions="nope",
    )
    with pytest.raises(ValidationError) as excinfo:
        task.clean()
    errors = excinfo.value.message_dict
    assert sorted(errors) == [
        "action",
        "conditions",
        "cron",
        "name",
        "notification",
        "retry_policy",
    ]
    assert errors["action"] == ["action.language: Input should be 'python' or 'javascript'"]
    assert errors["name"] == ["name: is required"]
    assert errors["conditions"] == ["conditions: must be a list"]
    assert errors["notification"][0].startswith("notification.channels[0]: Input should be")
    assert errors["retry_policy"][0].startswith("retryPolicy.maxRetries: ")
    assert errors["cron"][0].startswith("schedule.cron: must have exactly 5 fields")


def test_clean_maps_schedule_and_trigger_paths(user: Any) -> None:
    bad_zone = ScheduledTask(
        owner=user, name="n", type="one-time", timezone="Nowhere", action=WEBHOOK
    )
    with pytest.raises(ValidationError) as excinfo:
        bad_zone.clean()
    assert sorted(excinfo.value.message_dict) == ["run_at", "timezone"]
    assert excinfo.value.message_dict["run_at"] == ["schedule.at: is required for a one-time task"]

    bad_trigger = ScheduledTask(
        owner=user, name="n", type="trigger", trigger={"type": "pigeon"}, action=WEBHOOK
    )
    with pytest.raises(ValidationError) as excinfo:
        bad_trigger.clean()
    assert list(excinfo.value.message_dict) == ["trigger"]
    assert excinfo.value.message_dict["trigger"][0].startswith("trigger.type: ")


def test_clean_accepts_a_valid_task_and_does_not_check_the_past(user: Any) -> None:
    # A stored one-time task's time is eventually in the past; clean() must still pass.
    task = ScheduledTask(
        owner=user,
        name="done long ago",
        type="one-time",
        run_at=datetime(2001, 1, 1, tzinfo=UTC),
        action=WEBHOOK,
    )
    task.clean()  # raises on any error


def test_admin_style_model_form_reports_field_errors(user: Any) -> None:
    Form = modelform_factory(
        ScheduledTask,
        fields=["owner", "name", "type", "cron", "timezone", "action", "retry_policy"],
    )
    form = Form(
        data={
            "owner": user.pk,
            "name": "from admin",
            "type": "recurring",
            "cron": "0 0 31 2 *",
            "timezone": "UTC",
            "action": '{"type": "webhook", "url": "https://example.com"}',
            "retry_policy": '{"backoffMs": -1}',
        }
    )
    assert not form.is_valid()
    assert sorted(form.errors) == ["cron", "retry_policy"]
    assert form.errors["cron"] == [
        "schedule.cron: is not a valid cron expression: Invalid crontab: day_of_month '31' "
        "never occurs in month_of_year '2'."
    ]
    assert_nothing_stored()

    good = Form(
        data={
            "owner": user.pk,
            "name": "from admin",
            "type": "recurring",
            "cron": "0 0 * * 7",
            "timezone": "UTC",
            "action": '{"type": "webhook", "url": "https://example.com"}',
            "retry_policy": "{}",
        }
    )
    assert good.is_valid(), good.errors
    task = good.save()
    assert task.cron == "0 0 * * 0"
    assert PeriodicTask.objects.filter(pk=task.periodic_task_id).exists()


# --- database constraints (validation bypassed) -------------------------------------------


def expect_integrity_error(fn: Any) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        fn()


def test_one_time_task_needs_run_at_in_the_database(user: Any) -> None:
    task = one_time(user)
    expect_integrity_error(lambda: ScheduledTask.objects.filter(pk=task.pk).update(run_at=None))
    expect_integrity_error(
        lambda: ScheduledTask.objects.bulk_create(
            [ScheduledTask(owner=user, name="x", type="one-time", action=WEBHOOK)]
        )
    )
    assert ScheduledTask.objects.get(pk=task.pk).run_at is not None


def test_recurring_task_needs_cron_in_the_database(user: Any) -> None:
    task = recurring(user)
    expect_integrity_error(lambda: ScheduledTask.objects.filter(pk=task.pk).update(cron=""))
    expect_integrity_error(
        lambda: ScheduledTask.objects.bulk_create(
            [ScheduledTask(owner=user, name="x", type="recurring", action=WEBHOOK)]
        )
    )


def test_trigger_task_needs_trigger_in_the_database(user: Any) -> None:
    task = task_create(
        owner=user,
        name="t",
        type="trigger",
        action=WEBHOOK,
        trigger={"type": "event", "config": {"event": "x"}},
    )
    expect_integrity_error(lambda: ScheduledTask.objects.filter(pk=task.pk).update(trigger=None))
    expect_integrity_error(
        lambda: ScheduledTask.objects.bulk_create(
            [ScheduledTask(owner=user, name="x", type="trigger", action=WEBHOOK)]
        )
    )


def test_type_and_status_values_are_checked_in_the_database(user: Any) -> None:
    task = recurring(user)
    expect_integrity_error(lambda: ScheduledTask.objects.filter(pk=task.pk).update(type="cron"))
    expect_integrity_error(
        lambda: ScheduledTask.objects.filter(pk=task.pk).update(status="sleeping")
    )


def test_one_scheduled_execution_per_occurrence(user: Any) -> None:
    task = recurring(user)
    at = datetime(2030, 5, 1, 9, 0, tzinfo=UTC)
    TaskExecution.objects.create(task=task, trigger=ExecutionTrigger.SCHEDULED, scheduled_for=at)
    expect_integrity_error(
        lambda: TaskExecution.objects.create(
            task=task, trigger=ExecutionTrigger.SCHEDULED, scheduled_for=at
        )
    )
    expect_integrity_error(
        lambda: TaskExecution.objects.bulk_create(
            [TaskExecution(task=task, trigger=ExecutionTrigger.SCHEDULED, scheduled_for=at)]
        )
    )
    # Other occurrences, other tasks and other triggers at the same moment are fine.
    TaskExecution.objects.create(
        task=task, trigger=ExecutionTrigger.SCHEDULED, scheduled_for=at + timedelta(minutes=1)
    )
    TaskExecution.objects.create(
        task=recurring(user), trigger=ExecutionTrigger.SCHEDULED, scheduled_for=at
    )
    TaskExecution.objects.create(task=task, trigger=ExecutionTrigger.MANUAL, scheduled_for=at)
    assert TaskExecution.objects.filter(task=task).count() == 3


def test_manual_executions_may_repeat(user: Any) -> None:
    task = recurring(user)
    for _ in range(3):
        TaskExecution.objects.create(task=task, trigger=ExecutionTrigger.MANUAL)
    TaskExecution.objects.create(task=task, trigger=ExecutionTrigger.WEBHOOK)
    assert TaskExecution.objects.filter(task=task).count() == 4


def test_scheduled_execution_needs_its_occurrence(user: Any) -> None:
    task = recurring(user)
    expect_integrity_error(
        lambda: TaskExecution.objects.create(task=task, trigger=ExecutionTrigger.SCHEDULED)
    )


def test_execution_status_is_checked_in_the_database(user: Any) -> None:
    task = recurring(user)
    execution = TaskExecution.objects.create(task=task, trigger=ExecutionTrigger.MANUAL)
    assert execution.status == ExecutionStatus.QUEUED
    expect_integrity_error(
        lambda: TaskExecution.objects.filter(pk=execution.pk).update(status="lost")
    )
