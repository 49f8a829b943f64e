"""Chains as Celery canvas chains: one Celery task per step, {previous_result} forward,
every step recorded, a failing step stops the chain, each step retries on its own."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from tasks_app.conf import RUN_STEP_NAME
from tasks_app.models import ExecutionStatus, ExecutionTrigger, ScheduledTask, TaskExecution
from tasks_app.services import chains, executions, recovery
from tasks_app.services.definitions import task_create
from tests.anthropic_standin import message, point_sdk_at
from tests.broker import published_messages
from tests.http_receiver import Receiver, Reply
from tests.smtp_inbox import Inbox, smtp_fixture  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def conf(settings: Any, egress_allow_loopback: None) -> Any:
    settings.SCHEDULER_TASK_TIME_LIMIT = 60
    settings.SCHEDULER_LEASE_GRACE = 5
    settings.SCHEDULER_REQUEUE_AFTER = 300
    return settings


def chain_task(owner: Any, steps: list[dict[str, Any]], **fields: Any) -> ScheduledTask:
    return task_create(
        owner=owner,
        name="Chain",
        type="recurring",
        cron="0 2 * * *",
        action={"type": "chain", "tasks": steps},
        **fields,
    )


def start(task: ScheduledTask, memory_broker: Any, capture: Any) -> TaskExecution:
    """Queue, claim and run the execution: the chain is recorded and published."""
    execution = TaskExecution.objects.create(task=task, trigger=ExecutionTrigger.MANUAL)
    claimed = executions.execution_claim(execution_id=str(execution.pk), attempt=1, worker="w:1")
    assert claimed is not None
    with capture(execute=True):
        outcome = executions.execution_run(execution=claimed)
    assert outcome.status == "chained"
    [(name, kwargs, embed)] = published_messages(memory_broker)
    assert (name, kwargs) == (
        RUN_STEP_NAME,
        {"execution_id": str(execution.pk), "step": 0, "attempt": 1},
    )
    rest = [(sig["task"], sig["kwargs"]["step"]) for sig in reversed(embed["chain"] or [])]
    assert rest == [(RUN_STEP_NAME, i) for i in range(1, len(task.action["tasks"]))]
    return TaskExecution.objects.get(pk=execution.pk)


def run_step(execution: TaskExecution, step: int, attempt: int = 1) -> chains.StepOutcome:
    claimed = chains.step_claim(
        execution_id=str(execution.pk), step=step, attempt=attempt, worker=f"w:{step}"
    )
    assert claimed is not None, f"step {step} attempt {attempt} was not claimed"
    return chains.step_run(execution=claimed, step=step)


def test_the_guides_chain_scrape_claude_email(
    user: Any,
    conf: Any,
    receiver: Receiver,
    smtp: Inbox,
    monkeypatch: pytest.MonkeyPatch,
    memory_broker: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    receiver.reply("/data", Reply(body={"rows": [{"region": "north", "sales": 12}]}))
    point_sdk_at(
        receiver,
        monkeypatch,
        Reply(body=message("North is up 12%.", input_tokens=30, output_tokens=5)),
    )
    task = chain_task(
        user,
        [
            {"type": "webhook", "url": f"{receiver.url}/data", "method": "GET"},
            {"type": "ai-prompt", "prompt": "Analyze this data: {previous_result.body}"},
            {
                "type": "send-email",
                "to": "user@example.com",
                "subject": "Analysis Complete",
                "body": "{previous_result.text}",
            },
        ],
    )
    execution = start(task, memory_broker, django_capture_on_commit_callbacks)
    assert [s["status"] for s in execution.steps] == ["pending"] * 3
    assert [run_step(execution, i).status for i in range(3)] == ["next", "next", "completed"]

    [request] = receiver.received("/v1/messages")
    prompt = request.json()["messages"][0]["content"]
    assert prompt.startswith("Analyze this data: {")
    assert json.loads(prompt.removeprefix("Analyze this data: ")) == {
        "rows": [{"region": "north", "sales": 12}]
    }
    assert smtp.message().get_payload().strip() == "North is up 12%."
    done = TaskExecution.objects.get(pk=execution.pk)
    assert done.status == ExecutionStatus.COMPLETED
    assert [s["status"] for s in done.steps] == ["completed"] * 3
    assert all(s["durationMs"] >= 0 and s["attempt"] == 1 for s in done.steps)
    assert done.steps[1]["result"]["text"] == "North is up 12%."
    assert done.result == done.steps[2]["result"]
    assert (done.input_tokens, done.output_tokens) == (30, 5)
    assert done.duration_ms is not None and done.completed_at is not None
    assert done.current_step == 2


def test_a_failing_step_stops_the_chain_and_is_named(
    user: Any,
    conf: Any,
    receiver: Receiver,
    memory_broker: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    receiver.reply("/one", Reply(body={"ok": True}))
    receiver.reply("/two", Reply(status=404, body={"error": "no such bucket"}))
    task = chain_task(
        user,
        [
            {"type": "webhook", "url": f"{receiver.url}/one"},
            {"type": "webhook", "url": f"{receiver.url}/two"},
            {"type": "webhook", "url": f"{receiver.url}/three"},
        ],
    )
    execution = start(task, memory_broker, django_capture_on_commit_callbacks)
    assert run_step(execution, 0).status == "next"
    assert run_step(execution, 1).status == "failed"
    done = TaskExecution.objects.get(pk=execution.pk)
    assert done.status == ExecutionStatus.FAILED
    assert done.error.startswith("step 2 of 3 (webhook) failed: POST ")
    assert [s["status"] for s in done.steps] == ["completed", "failed", "not-run"]
    assert chains.step_claim(execution_id=str(done.pk), step=2, attempt=1, worker="w:9") is None
    assert receiver.received("/three") == []


def test_webhook_step_without_body_sends_the_previous_result(
    user: Any,
    conf: Any,
    receiver: Receiver,
    memory_broker: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    receiver.reply("/one", Reply(body={"archive": "backups/data.tar.gz"}))
    receiver.reply("/upload", Reply(body={"stored": True}))
    task = chain_task(
        user,
        [
            {"type": "webhook", "url": f"{receiver.url}/one", "method": "GET"},
            {"type": "webhook", "url": f"{receiver.url}/upload", "method": "POST"},
        ],
    )
    execution = start(task, memory_broker, django_capture_on_commit_callbacks)
    run_step(execution, 0)
    assert run_step(execution, 1).status == "completed"
    [upload] = receiver.received("/upload")
    assert upload.json()["body"] == {"archive": "backups/data.tar.gz"}


def test_each_step_retries_on_its_own_with_a_stable_idempotency_key(
    user: Any,
    conf: Any,
    receiver: Receiver,
    memory_broker: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    receiver.reply("/one", Reply(body={"n": 1}))
    receiver.reply("/flaky", Reply(status=503, times=1), Reply(body={"n": 2}))
    task = chain_task(
        user,
        [
            {"type": "webhook", "url": f"{receiver.url}/one"},
            {"type": "webhook", "url": f"{receiver.url}/flaky"},
        ],
        retry_policy={"maxRetries": 2, "backoffMs": 1000, "jitter": 0},
    )
    execution = start(task, memory_broker, django_capture_on_commit_callbacks)
    run_step(execution, 0)
    outcome = run_step(execution, 1)
    assert outcome == chains.StepOutcome(status="retrying", retry_in=1.0)
    waiting = TaskExecution.objects.get(pk=execution.pk)
    assert waiting.status == ExecutionStatus.RETRYING
    assert waiting.steps[1]["status"] == "retrying" and "503" in waiting.steps[1]["error"]
    assert chains.step_claim(execution_id=str(execution.pk), step=1, attempt=1, worker="x") is None
    assert run_step(execution, 1, attempt=2).status == "completed"
    first, second = receiver.received("/flaky")
    key = first.headers["Idempotency-Key"]
    assert key == f"{execution.pk}:1" == second.headers["Idempotency-Key"]
    assert receiver.received("/one")[0].headers["Idempotency-Key"] == f"{execution.pk}:0"
    done = TaskExecution.objects.get(pk=execution.pk)
    assert done.status == ExecutionStatus.COMPLETED and done.steps[1]["attempt"] == 2
    assert len(receiver.received("/one")) == 1


def test_duplicate_step_deliveries_are_dropped(
    user: Any,
    conf: Any,
    receiver: Receiver,
    memory_broker: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    receiver.reply("/one", Reply(body={}))
    task = chain_task(
        user,
        [
            {"type": "webhook", "url": f"{receiver.url}/one"},
            {"type": "webhook", "url": f"{receiver.url}/one"},
        ],
    )
    execution = start(task, memory_broker, django_capture_on_commit_callbacks)
    claimed = chains.step_claim(execution_id=str(execution.pk), step=0, attempt=1, worker="a:1")
    assert claimed is not None
    assert (
        chains.step_claim(execution_id=str(execution.pk), step=0, attempt=1, worker="b:1") is None
    )
    chains.step_run(execution=claimed, step=0)
    assert (
        chains.step_claim(execution_id=str(execution.pk), step=0, attempt=1, worker="c:1") is None
    )
    # the whole execution's message, redelivered, does not start the chain again
    assert (
        executions.execution_claim(execution_id=str(execution.pk), attempt=1, worker="d:1") is None
    )
    assert len(receiver.received("/one")) == 1


def test_recovery_publishes_the_rest_of_a_chain_whose_message_was_lost(
    user: Any,
    conf: Any,
    receiver: Receiver,
    memory_broker: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    receiver.reply("/one", Reply(body={}))
    task = chain_task(
        user,
        [{"type": "webhook", "url": f"{receiver.url}/one"} for _ in range(3)],
    )
    execution = start(task, memory_broker, django_capture_on_commit_callbacks)
    run_step(execution, 0)  # the message for step 2 is lost
    past = timezone.now() - timedelta(seconds=1)
    TaskExecution.objects.filter(pk=execution.pk).update(
        lease_expires_at=past, enqueued_at=past - timedelta(seconds=10)
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert recovery.executions_recover() == 1
    [(name, kwargs, embed)] = published_messages(memory_broker)
    assert (name, kwargs["step"], kwargs["attempt"]) == (RUN_STEP_NAME, 1, 1)
    assert [sig["kwargs"]["step"] for sig in embed["chain"]] == [2]
    assert run_step(execution, 1).status == "next"
    assert run_step(execution, 2).status == "completed"


def test_a_step_whose_worker_died_is_taken_over(
    user: Any,
    conf: Any,
    receiver: Receiver,
    memory_broker: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    receiver.reply("/one", Reply(body={}))
    task = chain_task(user, [{"type": "webhook", "url": f"{receiver.url}/one"}])
    execution = start(task, memory_broker, django_capture_on_commit_callbacks)
    assert chains.step_claim(execution_id=str(execution.pk), step=0, attempt=1, worker="gone:1")
    past = timezone.now() - timedelta(seconds=1)
    TaskExecution.objects.filter(pk=execution.pk).update(
        lease_expires_at=past, enqueued_at=past - timedelta(seconds=10)
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert recovery.executions_recover() == 1
    [(_name, kwargs, _embed)] = published_messages(memory_broker)
    assert (kwargs["step"], kwargs["attempt"]) == (0, 1)
    assert run_step(execution, 0, attempt=1).status == "completed"
    done = TaskExecution.objects.get(pk=execution.pk)
    assert any("was interrupted on gone:1" in entry["message"] for entry in done.logs)
