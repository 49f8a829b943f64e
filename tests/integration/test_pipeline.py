"""The whole pipeline with real processes: beat -> broker -> worker -> webhook executor
-> execution record, on the embedded default and on PostgreSQL + Redis."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.http_receiver import Receiver, Reply
from tests.integration.conftest import create_tasks, make_stack
from tests.integration.stack import Stack, connected_to, procfile_commands, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

EXECUTION_COLUMNS = "id, status, trigger, scheduled_for, attempt, deliveries, error, duration_ms"


def webhook(http: Receiver, path: str, **extra: Any) -> dict[str, Any]:
    return {"type": "webhook", "url": f"{http.url}{path}", **extra}


def requests_to(
    stack: Stack, http: Receiver, path: str, count: int = 1, timeout: float = 30.0
) -> list[Any]:
    """Wait for requests at the receiver; on a timeout, show what the processes said."""
    try:
        return http.wait_for(path, count, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack.log_tail(80)}") from None


def executions(stack: Stack, task_id: str) -> list[dict[str, Any]]:
    rows = stack.query(
        f"SELECT {EXECUTION_COLUMNS} FROM task_executions WHERE task_id = ?",
        (stack.id_param(task_id),),
    )
    names = [c.strip() for c in EXECUTION_COLUMNS.split(",")]
    return [dict(zip(names, row, strict=True)) for row in rows]


def task_row(stack: Stack, task_id: str) -> dict[str, Any]:
    cols = ["status", "run_count", "last_run", "next_run", "periodic_task_id"]
    [row] = stack.query(
        f"SELECT {', '.join(cols)} FROM scheduled_tasks WHERE id = ?", (stack.id_param(task_id),)
    )
    return dict(zip(cols, row, strict=True))


def finished(stack: Stack, task_id: str, count: int = 1) -> list[dict[str, Any]]:
    rows = executions(stack, task_id)
    done = [r for r in rows if r["status"] in {"completed", "failed", "skipped"}]
    return rows if len(done) >= count else []


def as_datetime(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def uuid_text(value: Any) -> str:
    import uuid

    return str(uuid.UUID(str(value)))


@pytest.fixture(scope="module", params=["embedded", "postgres-redis"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, http: Receiver
) -> Iterator[Stack]:
    stack = make_stack(request.param, tmp_path_factory.mktemp(request.param))
    try:
        stack.manage("migrate", "--noinput")
        commands = procfile_commands()
        stack.start("worker", commands["worker"])
        # Two beats at once, all the time: every fire must still run exactly once.
        stack.start("beat", commands["beat"])
        stack.start("beat2", commands["beat"])
        [stack.recurring_id] = create_tasks(
            stack,
            {  # type: ignore[attr-defined]
                "name": "every minute",
                "type": "recurring",
                "cron": "* * * * *",
                "timezone": "Europe/Paris",
                "action": webhook(http, f"/minutely-{stack.mode}"),
            },
        )
        yield stack
    finally:
        stack.stop()


def test_one_time_task_fires_at_its_time(stack: Stack, http: Receiver) -> None:
    path = f"/once-{stack.mode}"
    created = time.time()
    [task_id] = create_tasks(
        stack,
        {
            "name": "once",
            "type": "one-time",
            "in_seconds": 6,
            "action": webhook(http, path, body={"hello": "world"}, headers={"X-Test": "1"}),
        },
    )
    [request] = requests_to(stack, http, path, timeout=45)
    assert time.time() - created >= 5.0, "fired before its time"
    assert request.method == "POST"
    assert request.json() == {"hello": "world"}
    assert request.headers["X-Test"] == "1"
    [execution] = wait_until(lambda: finished(stack, task_id), 20, message=stack.log_tail())
    assert execution["status"] == "completed", execution
    assert execution["trigger"] == "scheduled"
    assert execution["attempt"] == 1 and execution["deliveries"] == 1
    assert execution["duration_ms"] is not None
    assert request.headers["Idempotency-Key"] == uuid_text(execution["id"])
    task = wait_until(lambda: (t := task_row(stack, task_id))["status"] == "completed" and t, 10)
    assert task["run_count"] == 1 and task["last_run"] is not None
    assert task["periodic_task_id"] is None and task["next_run"] is None
    time.sleep(6)  # beats keep ticking: nothing more may happen for this task
    assert len(http.received(path)) == 1
    assert len(executions(stack, task_id)) == 1


def test_twenty_tasks_due_together_with_two_beats_run_exactly_once(
    stack: Stack, http: Receiver
) -> None:
    specs = [
        {
            "name": f"burst {i}",
            "type": "one-time",
            "in_seconds": 8 + (i % 3),
            "action": webhook(http, f"/burst-{stack.mode}", body={"n": i}),
        }
        for i in range(20)
    ]
    task_ids = create_tasks(stack, *specs)
    requests_to(stack, http, f"/burst-{stack.mode}", 20, timeout=60)
    for task_id in task_ids:
        wait_until(lambda t=task_id: finished(stack, t), 30, message=stack.log_tail())
    time.sleep(8)  # both beats have ticked again
    bodies = sorted(r.json()["n"] for r in http.received(f"/burst-{stack.mode}"))
    assert bodies == list(range(20))
    rows = [executions(stack, t) for t in task_ids]
    assert all(len(r) == 1 and r[0]["status"] == "completed" for r in rows), rows
    # The execution history is the record: no Celery result row repeats it by default.
    [(results,)] = stack.query("SELECT COUNT(*) FROM django_celery_results_taskresult")
    assert results == 0


def test_pool_process_killed_mid_task_reruns_once(stack: Stack, http: Receiver) -> None:
    path = f"/child-kill-{stack.mode}"
    http.reply(path, Reply(delay=60, times=1), Reply())
    [task_id] = create_tasks(
        stack,
        {
            "name": "child kill",
            "type": "one-time",
            "in_seconds": 3,
            "action": webhook(http, path, timeout=120),
        },
    )
    requests_to(stack, http, path, timeout=45)
    busy = [
        pid for pid in stack.children("worker") if connected_to(pid, http.server.server_address[1])
    ]
    assert busy, "no pool process is talking to the receiver"
    os.kill(busy[0], signal.SIGKILL)
    requests = requests_to(stack, http, path, 2, timeout=60)
    [execution] = wait_until(lambda: finished(stack, task_id), 30, message=stack.log_tail())
    assert execution["status"] == "completed", execution
    assert execution["deliveries"] == 2
    keys = {r.headers["Idempotency-Key"] for r in requests}
    assert keys == {uuid_text(execution["id"])}


def test_worker_killed_mid_task_reruns_once(stack: Stack, http: Receiver) -> None:
    path = f"/worker-kill-{stack.mode}"
    http.reply(path, Reply(delay=90, times=1), Reply())
    [task_id] = create_tasks(
        stack,
        {
            "name": "worker kill",
            "type": "one-time",
            "in_seconds": 3,
            "action": webhook(http, path, timeout=120),
        },
    )
    requests_to(stack, http, path, timeout=45)
    stack.kill("worker", signal.SIGKILL)  # the whole worker: main process and pool
    stack.start("worker", procfile_commands()["worker"])
    requests = requests_to(stack, http, path, 2, timeout=90)
    [execution] = wait_until(lambda: finished(stack, task_id), 30, message=stack.log_tail())
    assert execution["status"] == "completed", execution
    assert execution["deliveries"] == 2
    assert {r.headers["Idempotency-Key"] for r in requests} == {uuid_text(execution["id"])}
    time.sleep(5)
    assert len(http.received(path)) == 2


def test_fire_lost_by_the_broker_runs_once_from_the_ledger(stack: Stack, http: Receiver) -> None:
    path = f"/lost-{stack.mode}"
    stack.stop_process("worker")
    [task_id] = create_tasks(
        stack,
        {
            "name": "lost message",
            "type": "one-time",
            "in_seconds": 2,
            "action": webhook(http, path),
        },
    )
    [recorded] = wait_until(lambda: executions(stack, task_id), 30, message=stack.log_tail())
    assert recorded["status"] == "queued"
    time.sleep(1)  # the beat publishes right after recording
    stack.lose_broker_messages()
    stack.start("worker", procfile_commands()["worker"])
    [request] = requests_to(stack, http, path, timeout=90)
    [execution] = wait_until(lambda: finished(stack, task_id), 30, message=stack.log_tail())
    assert execution["status"] == "completed" and execution["id"] == recorded["id"]
    assert request.headers["Idempotency-Key"] == uuid_text(execution["id"])
    time.sleep(5)
    assert len(http.received(path)) == 1


def test_recurring_task_fires_on_each_minute(stack: Stack, http: Receiver) -> None:
    task_id = stack.recurring_id  # type: ignore[attr-defined]
    requests_to(stack, http, f"/minutely-{stack.mode}", 2, timeout=150)
    rows = wait_until(lambda: finished(stack, task_id, 2), 30, message=stack.log_tail())
    occurrences = sorted(as_datetime(r["scheduled_for"]) for r in rows)
    assert all(o.second == 0 and o.microsecond == 0 for o in occurrences)
    assert all(
        b - a == timedelta(minutes=1) for a, b in zip(occurrences, occurrences[1:], strict=False)
    )
    assert len(occurrences) == len(set(occurrences))
    assert all(r["status"] == "completed" for r in rows if r["status"] != "running")
    task = task_row(stack, task_id)
    assert task["run_count"] >= 2 and task["periodic_task_id"] is not None
