"""Run conditions through the real service and real rows: local time and weekday in the
task's timezone, the owner's variables, api-response over a loopback HTTP server; and end
to end through execution_run (unmet: skipped, the action never runs)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from executors.egress import EgressPolicy
from executors.errors import EgressRefused, PermanentError, RetryableError
from tasks_app.models import (
    ExecutionStatus,
    ExecutionTrigger,
    ScheduledTask,
    TaskExecution,
    UserVariable,
)
from tasks_app.services import executions
from tasks_app.services.conditions import conditions_unmet
from tasks_app.services.definitions import task_create
from tests.api_clients import client_for
from tests.http_receiver import Receiver, Reply

pytestmark = pytest.mark.django_db

LOOPBACK = EgressPolicy(allow=("127.0.0.1",), timeout=5)
NO_ALLOWANCE = EgressPolicy(timeout=5)
# Monday 6 January 2031, 14:30 UTC: 09:30 EST in New York.
MONDAY_1430_UTC = datetime(2031, 1, 6, 14, 30, tzinfo=UTC)
# Monday 02:00 UTC is still Sunday 21:00 in New York.
MONDAY_0200_UTC = datetime(2031, 1, 6, 2, 0, tzinfo=UTC)
# Summer: 14:30 UTC is 10:30 EDT.
JULY_1430_UTC = datetime(2031, 7, 7, 14, 30, tzinfo=UTC)
STATUS_BODY = {
    "data": {"status": "healthy", "load": 0.42, "queue": 7},
    "items": [{"ok": True}, {"ok": False}],
    "tags": ["eu", "prod"],
}


def make_task(
    owner: Any,
    conditions: list[dict[str, Any]],
    *,
    zone: str = "UTC",
    url: str = "https://example.com/hook",
    retry_policy: dict[str, Any] | None = None,
) -> ScheduledTask:
    return task_create(
        owner=owner,
        name="conditional",
        type="recurring",
        cron="0 9 * * *",
        timezone=zone,
        action={"type": "webhook", "url": url, "body": {"hello": "world"}},
        conditions=conditions,
        retry_policy=retry_policy or {},
    )


def unmet(
    task: ScheduledTask,
    now: datetime = MONDAY_1430_UTC,
    policy: EgressPolicy = LOOPBACK,
    log: list[str] | None = None,
) -> str | None:
    return conditions_unmet(
        task=task, now=now, policy=policy, log=(log if log is not None else []).append
    )


def holds(owner: Any, condition: dict[str, Any], **kwargs: Any) -> bool:
    """Whether one condition holds (a fresh task, so each case stands alone)."""
    zone = kwargs.pop("zone", "UTC")
    return unmet(make_task(owner, [condition], zone=zone), **kwargs) is None


def set_variable(owner: Any, name: str, value: Any) -> None:
    UserVariable.objects.update_or_create(owner=owner, name=name, defaults={"value": value})


# --- time -------------------------------------------------------------------------------


def test_time_of_day_is_read_in_the_tasks_timezone(user: Any) -> None:
    new_york = {"zone": "America/New_York"}
    assert holds(user, {"type": "time", "operator": "greater", "value": "09:00"}, **new_york)
    assert not holds(user, {"type": "time", "operator": "less", "value": "09:00"}, **new_york)
    assert holds(user, {"type": "time", "operator": "equals", "value": "09:30"}, **new_york)
    assert not holds(user, {"type": "time", "operator": "notEquals", "value": "09:30"}, **new_york)
    # The same instant in UTC is 14:30.
    assert not holds(user, {"type": "time", "operator": "less", "value": "12:00"})
    assert holds(user, {"type": "time", "field": "time", "operator": "greater", "value": "14:00"})


def test_time_follows_daylight_saving(user: Any) -> None:
    condition = {"type": "time", "operator": "equals", "value": "10:30"}
    assert holds(user, condition, zone="America/New_York", now=JULY_1430_UTC)
    assert not holds(user, condition, zone="America/New_York", now=MONDAY_1430_UTC)


def test_unmet_time_reason_names_the_local_time(user: Any) -> None:
    task = make_task(
        user, [{"type": "time", "operator": "less", "value": "09:00"}], zone="America/New_York"
    )
    assert unmet(task) == "condition 1 not met: local time less '09:00' (actual: '09:30')"


def test_time_comparison_is_by_clock_not_by_text_quirks(user: Any) -> None:
    # 09:30 local: after 09:05, before 10:00 and 23:59, not before 00:00.
    zone = {"zone": "America/New_York"}
    assert holds(user, {"type": "time", "operator": "greater", "value": "09:05"}, **zone)
    assert holds(user, {"type": "time", "operator": "less", "value": "10:00"}, **zone)
    assert holds(user, {"type": "time", "operator": "less", "value": "23:59"}, **zone)
    assert not holds(user, {"type": "time", "operator": "less", "value": "00:00"}, **zone)


def test_weekday_is_read_in_the_tasks_timezone(user: Any) -> None:
    monday = {"type": "time", "field": "weekday", "operator": "equals", "value": "mon"}
    assert holds(user, monday, now=MONDAY_0200_UTC)  # UTC: Monday
    assert not holds(user, monday, now=MONDAY_0200_UTC, zone="America/New_York")  # Sunday
    sunday = {**monday, "value": "Sunday"}  # full names are read by their first letters
    assert holds(user, sunday, now=MONDAY_0200_UTC, zone="America/New_York")


def test_weekday_lists_and_operators(user: Any) -> None:
    weekend = ["sat", "sun"]
    weekdays = ["mon", "tue", "wed", "thu", "fri"]
    day = {"type": "time", "field": "weekday"}
    assert holds(user, {**day, "operator": "equals", "value": weekdays})
    assert holds(user, {**day, "operator": "contains", "value": weekdays})
    assert not holds(user, {**day, "operator": "equals", "value": weekend})
    assert holds(user, {**day, "operator": "notEquals", "value": weekend})
    assert not holds(user, {**day, "operator": "notEquals", "value": "MON"})


def test_all_conditions_must_hold_and_the_first_unmet_is_named(user: Any) -> None:
    set_variable(user, "environment", "production")
    task = make_task(
        user,
        [
            {"type": "variable", "operator": "equals", "value": "production"},
            {"type": "time", "field": "weekday", "operator": "equals", "value": "sat"},
            {"type": "time", "operator": "less", "value": "00:00"},
        ],
    )
    log: list[str] = []
    reason = unmet(task, log=log)
    assert reason is not None and reason.startswith("condition 2 not met: local weekday equals")
    assert "(actual: 'mon')" in reason
    assert log == ["condition 1 met: variable 'environment' equals"]


def test_no_conditions_always_hold(user: Any) -> None:
    assert unmet(make_task(user, [])) is None


# --- variables ----------------------------------------------------------------------------


GUIDE_VARIABLE = {"type": "variable", "operator": "equals", "value": "production"}


def test_guide_variable_condition_reads_environment(user: Any) -> None:
    task = make_task(user, [GUIDE_VARIABLE])
    set_variable(user, "environment", "production")
    assert unmet(task) is None
    set_variable(user, "environment", "staging")
    assert unmet(task) == (
        "condition 1 not met: variable 'environment' equals 'production' (actual: 'staging')"
    )


def test_missing_variable_is_unmet(user: Any) -> None:
    set_variable(user, "other", "production")
    reason = unmet(make_task(user, [GUIDE_VARIABLE]))
    assert reason is not None and reason.endswith("(actual: absent)")


def test_only_the_owners_variables_count(user: Any, django_user_model: Any) -> None:
    mallory = django_user_model.objects.create(username="mallory")
    set_variable(mallory, "environment", "production")
    assert unmet(make_task(user, [GUIDE_VARIABLE])) is not None
    assert unmet(make_task(mallory, [GUIDE_VARIABLE])) is None


def test_variable_exists(user: Any) -> None:
    exists = {"type": "variable", "field": "maintenance", "operator": "exists"}
    assert not holds(user, exists)
    set_variable(user, "maintenance", None)  # a null value counts as absent
    assert not holds(user, exists)
    set_variable(user, "maintenance", False)  # ...but false is a value
    assert holds(user, exists)
    assert not holds(user, {**exists, "value": False})  # "exists: false" means absent
    UserVariable.objects.filter(name="maintenance").delete()
    assert holds(user, {**exists, "value": False})


def test_variable_operators_on_json_values(user: Any) -> None:
    set_variable(user, "regions", ["eu", "us"])
    set_variable(user, "threshold", 10)
    set_variable(user, "motd", "maintenance tonight")
    var = {"type": "variable"}
    assert holds(user, {**var, "field": "regions", "operator": "contains", "value": "eu"})
    assert not holds(user, {**var, "field": "regions", "operator": "contains", "value": "ap"})
    assert holds(user, {**var, "field": "motd", "operator": "contains", "value": "maintenance"})
    assert holds(user, {**var, "field": "threshold", "operator": "greater", "value": 5})
    assert holds(user, {**var, "field": "threshold", "operator": "greater", "value": "9.5"})
    assert not holds(user, {**var, "field": "threshold", "operator": "less", "value": 10})
    assert holds(user, {**var, "field": "threshold", "operator": "equals", "value": "10"})
    assert holds(user, {**var, "field": "threshold", "operator": "notEquals", "value": 11})
    # Text that is not a number never compares numerically with one.
    assert not holds(user, {**var, "field": "motd", "operator": "greater", "value": 1})


# --- api-response -------------------------------------------------------------------------


@pytest.fixture
def status_server(receiver: Receiver) -> Receiver:
    receiver.reply("/status", Reply(body=STATUS_BODY))
    return receiver


def api_condition(server: Receiver, **fields: Any) -> dict[str, Any]:
    return {"type": "api-response", "url": f"{server.url}/status", **fields}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"field": "data.status", "operator": "equals", "value": "healthy"}, True),
        ({"field": "data.status", "operator": "notEquals", "value": "healthy"}, False),
        ({"field": "data.status", "operator": "contains", "value": "heal"}, True),
        ({"field": "items[0].ok", "operator": "equals", "value": True}, True),
        ({"field": "items[1].ok", "operator": "equals", "value": True}, False),
        ({"field": "items[5].ok", "operator": "exists"}, False),
        ({"field": "data.queue", "operator": "exists"}, True),
        ({"field": "data.missing", "operator": "equals", "value": "x"}, False),
        ({"field": "data.load", "operator": "greater", "value": 0.4}, True),
        ({"field": "data.load", "operator": "greater", "value": "0.5"}, False),
        ({"field": "data.queue", "operator": "less", "value": 10}, True),
        ({"field": "tags", "operator": "contains", "value": "prod"}, True),
        ({"operator": "contains", "value": "items"}, True),  # the whole body (a dict's keys)
    ],
)
def test_api_response_json_paths(
    user: Any, status_server: Receiver, fields: dict[str, Any], expected: bool
) -> None:
    assert holds(user, api_condition(status_server, **fields)) is expected
    assert [r.method for r in status_server.received("/status")] == ["GET"]


def test_api_response_top_level_list_and_text_bodies(user: Any, receiver: Receiver) -> None:
    receiver.reply("/list", Reply(body=[{"ok": True}]))
    receiver.reply(
        "/text", Reply(body=b"OK - maintenance at 22:00", headers={"Content-Type": "text/plain"})
    )
    listed = {"type": "api-response", "url": f"{receiver.url}/list"}
    assert holds(user, {**listed, "field": "[0].ok", "operator": "equals", "value": True})
    text = {"type": "api-response", "url": f"{receiver.url}/text"}
    assert holds(user, {**text, "operator": "contains", "value": "maintenance"})
    assert not holds(user, {**text, "field": "status", "operator": "exists"})


def test_api_response_reason_hides_the_query_string(user: Any, status_server: Receiver) -> None:
    condition = api_condition(status_server, field="data.status", operator="equals", value="down")
    condition["url"] += "?token=s3cret"
    reason = unmet(make_task(user, [condition]))
    assert reason == (
        f"condition 1 not met: {status_server.url}/status data.status equals 'down' "
        "(actual: 'healthy')"
    )
    assert status_server.received("/status")[0].path == "/status?token=s3cret"


@pytest.mark.parametrize("status", [429, 500, 503])
def test_api_response_server_errors_are_retryable(
    user: Any, receiver: Receiver, status: int
) -> None:
    receiver.reply("/status", Reply(status=status, body={"error": "busy"}))
    task = make_task(user, [api_condition(receiver, operator="exists")])
    with pytest.raises(RetryableError, match=f"HTTP {status}"):
        unmet(task)


def test_api_response_client_errors_are_permanent(user: Any, receiver: Receiver) -> None:
    receiver.reply("/status", Reply(status=404, body={"error": "no such"}))
    task = make_task(user, [api_condition(receiver, operator="exists")])
    with pytest.raises(PermanentError, match="HTTP 404"):
        unmet(task)


def test_api_response_refused_without_the_egress_allowance(
    user: Any, status_server: Receiver
) -> None:
    task = make_task(user, [api_condition(status_server, operator="exists")])
    with pytest.raises(EgressRefused, match="not a public address"):
        unmet(task, policy=NO_ALLOWANCE)
    assert status_server.received("/status") == []


def test_api_response_unreachable_is_retryable(user: Any, receiver: Receiver) -> None:
    url = receiver.url
    receiver.server.shutdown()
    receiver.server.server_close()
    task = make_task(user, [{"type": "api-response", "url": f"{url}/x", "operator": "exists"}])
    with pytest.raises(RetryableError):
        unmet(task)


# --- end to end through execution_run -------------------------------------------------------


def run_once(task: ScheduledTask) -> TaskExecution:
    """Queue a manual execution, claim it and run it, as a worker would."""
    queued = TaskExecution.objects.create(task=task, trigger=ExecutionTrigger.MANUAL)
    claimed = executions.execution_claim(
        execution_id=str(queued.pk), attempt=1, worker=executions.worker_identity()
    )
    assert claimed is not None
    executions.execution_run(execution=claimed)
    queued.refresh_from_db()
    return queued


@pytest.fixture
def hook(receiver: Receiver, egress_allow_loopback: None) -> Receiver:
    return receiver


def test_unmet_condition_skips_and_the_action_never_runs(user: Any, hook: Receiver) -> None:
    task = make_task(user, [GUIDE_VARIABLE], url=f"{hook.url}/hook")
    execution = run_once(task)
    assert execution.status == ExecutionStatus.SKIPPED
    assert execution.error == (
        "skipped: condition 1 not met: variable 'environment' equals 'production' (actual: absent)"
    )
    assert execution.completed_at is not None and execution.result is None
    assert any(entry["message"] == execution.error for entry in execution.logs)
    assert hook.received("/hook") == []
    task.refresh_from_db()
    assert task.run_count == 0  # a skip is not a run


def test_met_condition_runs_the_action(user: Any, hook: Receiver) -> None:
    set_variable(user, "environment", "production")
    task = make_task(user, [GUIDE_VARIABLE], url=f"{hook.url}/hook")
    execution = run_once(task)
    assert execution.status == ExecutionStatus.COMPLETED, execution.error
    assert [r.json() for r in hook.received("/hook")] == [{"hello": "world"}]
    messages = [entry["message"] for entry in execution.logs]
    assert "condition 1 met: variable 'environment' equals" in messages


def test_unmet_time_condition_skips_end_to_end(user: Any, hook: Receiver) -> None:
    # Nothing is earlier than 00:00, whenever the test runs.
    never = {"type": "time", "operator": "less", "value": "00:00"}
    execution = run_once(make_task(user, [never], url=f"{hook.url}/hook"))
    assert execution.status == ExecutionStatus.SKIPPED
    assert execution.error.startswith("skipped: condition 1 not met: local time less '00:00'")
    assert hook.received("/hook") == []


def test_api_response_condition_end_to_end(user: Any, hook: Receiver) -> None:
    hook.reply("/status", Reply(body=STATUS_BODY))
    healthy = api_condition(hook, field="data.status", operator="equals", value="healthy")
    execution = run_once(make_task(user, [healthy], url=f"{hook.url}/hook"))
    assert execution.status == ExecutionStatus.COMPLETED, execution.error
    assert len(hook.received("/status")) == 1 and len(hook.received("/hook")) == 1


def test_condition_fetch_failure_retries_instead_of_skipping(user: Any, hook: Receiver) -> None:
    hook.reply("/status", Reply(status=503))
    task = make_task(
        user,
        [api_condition(hook, operator="exists")],
        url=f"{hook.url}/hook",
        retry_policy={"maxRetries": 1, "backoffMs": 1000},
    )
    execution = run_once(task)
    assert execution.status == ExecutionStatus.RETRYING
    assert execution.error == "condition URL answered HTTP 503"
    assert hook.received("/hook") == []


def test_condition_refused_by_egress_fails_without_retrying(
    user: Any, receiver: Receiver, settings: Any
) -> None:
    settings.SCHEDULER_EGRESS_ALLOW = []
    task = make_task(
        user,
        [api_condition(receiver, operator="exists")],
        url="https://example.com/hook",
        retry_policy={"maxRetries": 3},
    )
    execution = run_once(task)
    assert execution.status == ExecutionStatus.FAILED
    assert "not a public address" in execution.error
    assert receiver.requests == []


# --- validation of the spec ------------------------------------------------------------------


def create_errors(owner: Any, conditions: Any) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as caught:
        make_task(owner, conditions)
    return caught.value.message_dict


@pytest.mark.parametrize(
    ("conditions", "path", "words"),
    [
        ([{"type": "time", "operator": "greater", "value": "9am"}], "conditions[0]", "09:00"),
        ([{"type": "time", "operator": "equals", "value": "24:00"}], "conditions[0]", "09:00"),
        ([{"type": "time", "operator": "contains", "value": "09:00"}], "conditions[0]", "equals"),
        (
            [{"type": "time", "field": "weekday", "operator": "equals", "value": "funday"}],
            "conditions[0]",
            "mon..sun",
        ),
        (
            [{"type": "time", "field": "month", "operator": "equals", "value": 1}],
            "conditions[0]",
            "weekday",
        ),
        ([{"type": "api-response", "operator": "exists"}], "conditions[0]", "needs a url"),
        (
            [{"type": "variable", "operator": "exists", "url": "https://example.com"}],
            "conditions[0]",
            "only an api-response",
        ),
        (
            [
                GUIDE_VARIABLE,
                {"type": "api-response", "url": "ftp://example.com/x", "operator": "exists"},
            ],
            "conditions[1].url",
            "pattern",
        ),
        ([{"type": "variable", "value": "production"}], "conditions[0].operator", "required"),
        ([{"type": "variable", "operator": "equals"}], "conditions[0]", "needs a value"),
        ([{"type": "weather", "operator": "exists"}], "conditions[0].type", ""),
        ([{"type": "variable", "operator": "between", "value": 1}], "conditions[0].operator", ""),
        ([{**GUIDE_VARIABLE, "extra": 1}], "conditions[0].extra", ""),
        ({"type": "time"}, "conditions", "list"),
    ],
)
def test_bad_conditions_are_refused_with_their_path(
    user: Any, conditions: Any, path: str, words: str
) -> None:
    errors = create_errors(user, conditions)
    assert path in errors, errors
    assert any(words in message for message in errors[path]), errors[path]
    assert not ScheduledTask.objects.exists()


def test_bad_condition_through_the_api_is_a_400(django_user_model: Any) -> None:
    client = client_for(django_user_model, "user-123")
    answer = client.post(
        "/api/tasks",
        {
            "name": "morning only",
            "type": "recurring",
            "schedule": {"cron": "*/5 * * * *"},
            "action": {"type": "webhook", "url": "https://example.com/hook"},
            "conditions": [{"type": "time", "operator": "greater", "value": "9am"}],
        },
        format="json",
    )
    assert answer.status_code == 400
    assert list(answer.json()) == ["conditions[0]"], answer.json()


# --- JSON paths and values that are not what they seem ------------------------------------


def test_a_json_path_with_unsupported_characters_is_refused(
    user: Any, status_server: Receiver
) -> None:
    condition = api_condition(
        status_server, field="data.status:detail", operator="equals", value="healthy"
    )
    with pytest.raises(ValidationError) as excinfo:
        holds(user, condition)
    assert "JSON path" in str(excinfo.value)


def test_contains_an_object_in_an_object_is_unmet_not_a_crash(user: Any) -> None:
    set_variable(user, "flags", {"beta": True})
    condition = {"type": "variable", "field": "flags", "operator": "contains", "value": {"a": 1}}
    assert not holds(user, condition)


def test_a_scheduled_run_is_judged_at_its_nominal_time_not_its_late_start(
    user: Any, hook: Receiver
) -> None:
    """The occurrence was due at 09:00 New York; the worker starts it hours late, yet
    `less 09:30` is judged at 09:00, so it runs (now, it would be skipped)."""
    from datetime import UTC
    from datetime import datetime as dt

    hook.reply("/hook", Reply(body={"ok": True}))
    task = make_task(
        user,
        [{"type": "time", "operator": "less", "value": "09:30"}],
        zone="America/New_York",
        url=f"{hook.url}/hook",
    )
    nominal = dt(2026, 3, 2, 14, 0, tzinfo=UTC)  # 09:00 in New York (EST)
    queued = TaskExecution.objects.create(
        task=task, trigger=ExecutionTrigger.SCHEDULED, scheduled_for=nominal
    )
    claimed = executions.execution_claim(
        execution_id=str(queued.pk), attempt=1, worker=executions.worker_identity()
    )
    assert claimed is not None
    executions.execution_run(execution=claimed)
    queued.refresh_from_db()
    assert queued.status == ExecutionStatus.COMPLETED, queued.error
    assert len(hook.received("/hook")) == 1


def test_a_one_time_task_whose_only_occurrence_is_skipped_is_done(
    user: Any, hook: Receiver
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from tasks_app.models import TaskStatus

    task = task_create(
        owner=user,
        name="once, if production",
        type="one-time",
        run_at=timezone.now() + timedelta(hours=1),
        action={"type": "webhook", "url": f"{hook.url}/hook"},
        conditions=[GUIDE_VARIABLE],
    )
    queued = TaskExecution.objects.create(
        task=task, trigger=ExecutionTrigger.SCHEDULED, scheduled_for=task.run_at
    )
    claimed = executions.execution_claim(
        execution_id=str(queued.pk), attempt=1, worker=executions.worker_identity()
    )
    assert claimed is not None
    executions.execution_run(execution=claimed)
    task.refresh_from_db()
    assert TaskExecution.objects.get(pk=queued.pk).status == ExecutionStatus.SKIPPED
    assert (task.status, task.next_run) == (TaskStatus.COMPLETED, None)
    assert hook.received("/hook") == []
