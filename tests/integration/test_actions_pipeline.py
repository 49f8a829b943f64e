"""Actions, chains and notifications through a real worker process: chain steps that
retry on their own, a chain step whose worker process is killed, run-code in the
sandbox, a failing step that stops its chain, and a failure notification webhook."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.http_receiver import Receiver, Reply
from tests.integration.conftest import make_stack
from tests.integration.stack import Stack, procfile_commands, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

FINISHED = {"completed", "failed", "skipped"}
COLUMNS = ("id", "status", "attempt", "deliveries", "error", "result", "steps")

RUN_NOW = """
from django.contrib.auth import get_user_model
from tasks_app.services.definitions import task_create
from tasks_app.services.dispatch import task_run_now
owner, _ = get_user_model().objects.get_or_create(username="it")
task = task_create(owner=owner, **SPEC)
result = [str(task.pk), str(task_run_now(task=task).pk)]
"""


class Stacks:
    """At most one stack per mode (worker + beat from the Procfile), each started when a
    test first needs it and stopped when the module is done."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self.factory = factory
        self.started: dict[str, Stack] = {}

    def get(self, mode: str) -> Stack:
        if mode not in self.started:
            stack = make_stack(mode, self.factory.mktemp(mode))
            self.started[mode] = stack
            stack.manage("migrate", "--noinput")
            commands = procfile_commands()
            stack.start("worker", commands["worker"])
            stack.start("beat", commands["beat"])  # the recovery job runs from beat
        return self.started[mode]

    def stop(self) -> None:
        for stack in self.started.values():
            stack.stop()


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stacks]:
    pool = Stacks(tmp_path_factory)
    try:
        yield pool
    finally:
        pool.stop()


def run_now(stack: Stack, action: dict[str, Any], **fields: Any) -> str:
    """Create a webhook-triggered task (never due by itself) and run it now: the
    execution's id."""
    spec = {
        "name": f"it {action['type']}",
        "type": "trigger",
        "trigger": {"type": "webhook", "config": {}},
        "action": action,
        **fields,
    }
    _, execution_id = stack.orm(f"import json\nSPEC = json.loads({json.dumps(spec)!r})\n{RUN_NOW}")
    return execution_id


def execution(stack: Stack, execution_id: str) -> dict[str, Any]:
    [row] = stack.query(
        f"SELECT {', '.join(COLUMNS)} FROM task_executions WHERE id = ?",
        (stack.id_param(execution_id),),
    )
    found = dict(zip(COLUMNS, row, strict=True))
    for key in ("result", "steps"):  # SQLite hands JSON back as text
        if isinstance(found[key], str):
            found[key] = json.loads(found[key])
    return found


def finished(stack: Stack, execution_id: str, timeout: float = 40) -> dict[str, Any]:
    """The execution once it has finished; on a timeout, what the processes said."""
    return wait_until(
        lambda: (e := execution(stack, execution_id))["status"] in FINISHED and e,
        timeout,
        interval=0.3,
        message=f"{execution(stack, execution_id)}\n{stack.log_tail(80)}",
    )


def logs_text(stack: Stack, execution_id: str) -> str:
    """An execution's logs as JSON text."""
    [(logs,)] = stack.query(
        "SELECT logs FROM task_executions WHERE id = ?", (stack.id_param(execution_id),)
    )
    return logs if isinstance(logs, str) else json.dumps(logs)


def requests_to(
    stack: Stack, http: Receiver, path: str, count: int = 1, timeout: float = 40
) -> list[Any]:
    try:
        return http.wait_for(path, count, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack.log_tail(80)}") from None


def webhook(http: Receiver, path: str, **extra: Any) -> dict[str, Any]:
    return {"type": "webhook", "url": f"{http.url}{path}", **extra}


def keys(requests: list[Any]) -> list[str]:
    return [r.headers["Idempotency-Key"] for r in requests]


def step_summary(steps: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    return [(s["type"], s["status"], s["attempt"]) for s in steps]


@pytest.mark.parametrize("mode", ["embedded", "postgres-redis"])
def test_chain_step_retries_alone_with_the_same_idempotency_key(
    mode: str, stacks: Stacks, http: Receiver
) -> None:
    """The middle of three webhook steps answers 503 once: only that step runs again,
    after its backoff, with the same Idempotency-Key; the chain completes."""
    stack = stacks.get(mode)
    first, middle, last = (f"/retry-{mode}-{n}" for n in ("a", "b", "c"))
    http.reply(middle, Reply(status=503, body={"error": "busy"}, times=1), Reply())
    execution_id = run_now(
        stack,
        {
            "type": "chain",
            "tasks": [
                webhook(http, first, body={"n": 1}),
                webhook(http, middle, body={"n": 2}),
                webhook(http, last, body={"n": 3}),
            ],
        },
        retry_policy={"maxRetries": 2, "backoffMs": 1000},
    )
    done = finished(stack, execution_id)
    assert done["status"] == "completed", done
    assert step_summary(done["steps"]) == [
        ("webhook", "completed", 1),
        ("webhook", "completed", 2),
        ("webhook", "completed", 1),
    ]
    assert done["result"]["status"] == 200
    assert keys(http.received(first)) == [f"{execution_id}:0"]
    assert keys(http.received(middle)) == [f"{execution_id}:1"] * 2
    assert keys(http.received(last)) == [f"{execution_id}:2"]
    assert [r.json() for r in http.received(middle)] == [{"n": 2}] * 2


def test_chain_step_whose_worker_process_is_killed_runs_once_more(
    stacks: Stacks, http: Receiver
) -> None:
    """The pool process running step 2 is SIGKILLed while the endpoint holds the request:
    the step's message comes back (acks_late, reject_on_worker_lost), the claim sees its
    holder is gone and runs the step again; the chain finishes once."""
    stack = stacks.get("postgres-redis")
    first, middle, last = "/kill-a", "/kill-b", "/kill-c"
    http.reply(middle, Reply(delay=8, times=1), Reply())
    execution_id = run_now(
        stack,
        {
            "type": "chain",
            "tasks": [
                webhook(http, first),
                webhook(http, middle, body={"step": 2}, timeout=60),
                webhook(http, last, body={"step": 3}),
            ],
        },
    )
    requests_to(stack, http, middle)
    port = http.server.server_address[1]
    busy = wait_until(lambda: stack.children_connected_to("worker", port), 5, interval=0.1)
    assert len(busy) == 1, busy
    os.kill(busy[0], signal.SIGKILL)
    done = finished(stack, execution_id, timeout=60)
    assert done["status"] == "completed", done
    assert step_summary(done["steps"]) == [
        ("webhook", "completed", 1),
        ("webhook", "completed", 1),  # the same attempt, delivered again
        ("webhook", "completed", 1),
    ]
    time.sleep(2)  # anything that would run a step again has had its chance
    # Step 2: the request the killed process had sent (never answered to it) and the one
    # after the takeover, both with the step's key; steps 1 and 3: exactly one each.
    assert keys(http.received(first)) == [f"{execution_id}:0"]
    assert keys(http.received(middle)) == [f"{execution_id}:1"] * 2
    assert keys(http.received(last)) == [f"{execution_id}:2"]
    # The first request to step 1 forwarded nothing (no previous step).
    assert http.received(first)[0].body == b""


def test_run_code_result_json_and_timeout(stacks: Stacks) -> None:
    """An endless loop is killed at its timeoutSeconds and the execution fails with that
    reason; the same worker then runs a Python program whose last line is JSON."""
    stack = stacks.get("embedded")
    started = time.monotonic()
    looping = run_now(
        stack,
        {
            "type": "run-code",
            "language": "python",
            "code": "while True:\n    pass\n",
            "timeoutSeconds": 2,
        },
    )
    failed = finished(stack, looping)
    assert failed["status"] == "failed", failed
    assert failed["error"] == "the python code ran past its 2 s limit and was killed"
    assert time.monotonic() - started < 20

    code = (
        "import json, sys\n"
        "print('working', file=sys.stderr)\n"
        "print(json.dumps({'sum': sum(range(10)), 'python': sys.version_info[0]}))\n"
    )
    printed = run_now(stack, {"type": "run-code", "language": "python", "code": code})
    done = finished(stack, printed)
    assert done["status"] == "completed", done
    assert done["result"]["json"] == {"sum": 45, "python": 3}
    assert done["result"]["exitCode"] == 0 and "working" in done["result"]["stderr"]


def test_failing_chain_step_stops_the_chain(stacks: Stacks, http: Receiver) -> None:
    """Step 2 answers 404 (not retryable): step 3 is never called and the execution
    fails naming the step."""
    stack = stacks.get("postgres-redis")
    first, middle, last = "/stop-a", "/stop-b", "/stop-c"
    http.reply(middle, Reply(status=404, body={"error": "no such thing"}))
    execution_id = run_now(
        stack,
        {
            "type": "chain",
            "tasks": [webhook(http, first), webhook(http, middle), webhook(http, last)],
        },
        retry_policy={"maxRetries": 2, "backoffMs": 1000},
    )
    done = finished(stack, execution_id)
    assert done["status"] == "failed", done
    assert done["error"] == (
        f"step 2 of 3 (webhook) failed: POST {http.url}{middle} answered HTTP 404"
    )
    assert step_summary(done["steps"]) == [
        ("webhook", "completed", 1),
        ("webhook", "failed", 1),
        ("webhook", "not-run", 0),
    ]
    time.sleep(2)  # a chain that went on would call step 3 now
    assert len(http.received(first)) == 1 and len(http.received(middle)) == 1
    assert http.received(last) == []


def test_failure_notification_webhook_fires_once(stacks: Stacks, http: Receiver) -> None:
    """notification channels ["webhook"] with onFailure: one POST after a failed run."""
    stack = stacks.get("embedded")
    action_path, notify_path = "/notify-action", "/notify-hook"
    http.reply(action_path, Reply(status=410, body={"error": "gone"}))
    execution_id = run_now(
        stack,
        webhook(http, action_path),
        notification={
            "onFailure": True,
            "channels": ["webhook"],
            "webhookUrl": f"{http.url}{notify_path}?token=s3cret",
        },
    )
    [notice] = requests_to(stack, http, notify_path)
    done = finished(stack, execution_id)
    assert done["status"] == "failed", done
    payload = notice.json()
    assert payload["event"] == "execution.failed"
    assert payload["execution"]["id"] == execution_id
    assert payload["execution"]["status"] == "failed"
    assert payload["execution"]["error"] == done["error"] and "410" in done["error"]
    assert payload["task"]["name"] == "it webhook"
    assert notice.headers["Idempotency-Key"] == f"notify-{execution_id}"
    assert notice.path.endswith("?token=s3cret")
    assert uuid.UUID(payload["task"]["id"])
    # The execution's logs note the delivery by origin only: the URL's query is a secret.
    logs = wait_until(
        lambda: "notified by webhook" in (text := logs_text(stack, execution_id)) and text,
        10,
        interval=0.3,
    )
    assert f"notified by webhook to {http.url} (HTTP 200)" in str(logs)
    assert "s3cret" not in str(logs)
    time.sleep(2)  # a second notification would have been sent by now
    assert len(http.received(notify_path)) == 1
