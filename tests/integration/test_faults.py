"""Fault injection with real processes (``pytest -m faults``): a worker SIGTERMed mid-task,
a task whose worker process dies every time, Redis restarted with work queued,
PostgreSQL restarted mid-run, a retry delay longer than the broker's visibility timeout,
a transaction rolled back after a run was queued.

The Redis and PostgreSQL servers here are private to this module (started on free ports
from the machine's own binaries), so restarting them disturbs nothing else; the system
under test is the same code, pointed at them by DATABASE_URL and CELERY_BROKER_URL.
Each case is bounded by its own timeout.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.http_receiver import Receiver, Reply
from tests.integration.conftest import create_tasks
from tests.integration.stack import Stack, free_port, procfile_commands, wait_until
from tests.services import unavailable

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(180)]

ENV = {
    # Short limits: a lost worker or message is noticed within seconds. The visibility
    # timeout is short on purpose (case: a retry delay longer than it).
    "SCHEDULER_TASK_TIME_LIMIT": "6",
    "SCHEDULER_LEASE_GRACE": "2",
    "CELERY_VISIBILITY_TIMEOUT": "10",
    "SCHEDULER_RECOVERY_INTERVAL": "2",
    "SCHEDULER_REQUEUE_AFTER": "8",
    "SCHEDULER_MAX_DELIVERIES": "3",
}


# --- private servers ------------------------------------------------------------------------


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        self.binary = shutil.which("redis-server") or ""
        if not self.binary:
            unavailable(
                "redis-server is not installed",
                remedy="apt-get install redis-server",
                label="SERVICE MISSING",
            )
        self.port = free_port()
        self.log = workdir / "redis.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: _answers(self.port), 15, 0.1, "private redis did not start")

    def stop(self) -> None:
        """What a crash or a restart without persistence does: the queue is gone."""
        if self.process:
            self.process.kill()
            self.process.wait(10)
            self.process = None


class PostgresServer:
    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            unavailable(
                "PostgreSQL's initdb is not installed",
                remedy="apt-get install postgresql",
                label="SERVICE MISSING",
            )
        self.bin = Path(found[-1]).parent
        self.port = free_port()
        # Its own directory straight under /tmp: pytest's are private to root, and the
        # server runs as postgres when the tests run as root (initdb refuses root).
        workdir = Path(tempfile.mkdtemp(prefix="faults-pg-"))
        self.workdir = workdir
        self.data = workdir / "pgdata"
        self.sockets = workdir / "pgsock"
        self.sockets.mkdir()
        self.as_postgres = os.geteuid() == 0  # initdb refuses to run as root
        if self.as_postgres:
            shutil.chown(workdir, "postgres")
            shutil.chown(self.sockets, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}"

    def _run(self, tool: str, *args: str) -> None:
        argv = [str(self.bin / tool), *args]
        if self.as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=True, capture_output=True, timeout=120)

    def ctl(self, action: str) -> None:
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.workdir / "server.log")  # the server must not hold our pipes open
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-m", "fast", "-w", action
        )


def _answers(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# --- the stack --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RedisServer, PostgresServer]]:
    redis = RedisServer(tmp_path_factory.mktemp("redis"))
    postgres = PostgresServer()
    redis.start()
    postgres.ctl("start")
    try:
        yield redis, postgres
    finally:
        redis.stop()
        postgres.ctl("stop")
        shutil.rmtree(postgres.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


@pytest.fixture(scope="module")
def stack(
    servers: tuple[RedisServer, PostgresServer],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    redis, postgres = servers
    stack = Stack(
        "postgres-redis",
        tmp_path_factory.mktemp("faults"),
        {**ENV, "SCHEDULER_EGRESS_ALLOW": "127.0.0.1"},
        postgres_url=postgres.url,
        redis_url=redis.url,
    )
    try:
        stack.manage("migrate", "--noinput")
        start(stack, "worker")
        start(stack, "beat")
        yield stack
    finally:
        stack.stop()


def start(stack: Stack, name: str) -> None:
    stack.start(name, procfile_commands()[name])


def ensure_running(stack: Stack, name: str) -> None:
    process = stack.processes.get(name)
    if process is None or process.poll() is not None:
        stack.processes.pop(name, None)
        start(stack, name)


def trigger_task(stack: Stack, url: str, **fields: Any) -> str:
    [task_id] = create_tasks(
        stack,
        {
            "name": "fault",
            "type": "trigger",
            "trigger": {"type": "event", "config": {"event": "x"}},
            "action": {"type": "webhook", "url": url, "timeout": 20},
            **fields,
        },
    )
    return task_id


RUN_NOW = """
from tasks_app.models import ScheduledTask
from tasks_app.services.dispatch import task_run_now
task = ScheduledTask.objects.get(pk=TASK)
result = [str(task_run_now(task=task).pk) for _ in range(COUNT)]
"""


def run_now(stack: Stack, task_id: str, count: int = 1) -> list[str]:
    return stack.orm(f"TASK = {task_id!r}\nCOUNT = {count}\n{RUN_NOW}")


def execution(stack: Stack, execution_id: str) -> dict[str, Any]:
    [row] = stack.query(
        "SELECT status, attempt, deliveries, error FROM task_executions WHERE id = ?",
        (execution_id,),
    )
    return dict(zip(("status", "attempt", "deliveries", "error"), row, strict=True))


def finished(stack: Stack, execution_id: str) -> dict[str, Any] | None:
    row = execution(stack, execution_id)
    return row if row["status"] in {"completed", "failed", "skipped"} else None


def keys(receiver: Receiver, path: str) -> list[str]:
    return [r.headers.get("Idempotency-Key", "") for r in receiver.received(path)]


# --- the cases ----------------------------------------------------------------------------------


def test_sigterm_lets_the_running_task_finish(stack: Stack, receiver: Receiver) -> None:
    ensure_running(stack, "worker")
    receiver.reply("/sigterm", Reply(delay=3))
    [run] = run_now(stack, trigger_task(stack, f"{receiver.url}/sigterm"))
    receiver.wait_for("/sigterm", 1, timeout=30)
    stack.stop_process("worker", timeout=30)  # SIGTERM: warm shutdown
    row = execution(stack, run)
    assert row["status"] == "completed" and row["attempt"] == 1, (row, stack.log_tail())
    start(stack, "worker")
    time.sleep(3)
    assert len(receiver.received("/sigterm")) == 1


def test_a_task_whose_worker_process_dies_every_time_ends_failed(
    stack: Stack, receiver: Receiver
) -> None:
    ensure_running(stack, "worker")
    receiver.reply("/dies", Reply(delay=30))
    [run] = run_now(stack, trigger_task(stack, f"{receiver.url}/dies"))
    port = receiver.server.server_address[1]
    deadline = time.monotonic() + 120
    killed = 0
    while not finished(stack, run) and time.monotonic() < deadline:
        for pid in stack.children_connected_to("worker", port):
            os.kill(pid, signal.SIGKILL)
            killed += 1
        time.sleep(0.2)
    row = finished(stack, run)
    assert row, stack.log_tail()
    assert row["status"] == "failed"
    assert "was lost 3 times; giving up" in row["error"]
    time.sleep(5)  # no endless requeue: nothing more arrives
    assert len(receiver.received("/dies")) == 3 == killed


def test_redis_restarted_with_work_queued_runs_all_of_it_once(
    stack: Stack, receiver: Receiver, servers: tuple[RedisServer, PostgresServer]
) -> None:
    redis, _ = servers
    ensure_running(stack, "worker")
    stack.stop_process("worker")
    runs = run_now(stack, trigger_task(stack, f"{receiver.url}/queued"), count=10)
    redis.stop()  # the ten messages are gone with it
    redis.start()
    start(stack, "worker")
    ensure_running(stack, "beat")
    done = wait_until(
        lambda: all(finished(stack, run) for run in runs),
        timeout=90,
        message=stack.log_tail(),
    )
    assert done
    assert {execution(stack, run)["status"] for run in runs} == {"completed"}
    sent = keys(receiver, "/queued")
    assert len(sent) == len(set(sent)) == 10


def test_postgres_restarted_mid_run_recovers_without_a_duplicate(
    stack: Stack, receiver: Receiver, servers: tuple[RedisServer, PostgresServer]
) -> None:
    _, postgres = servers
    ensure_running(stack, "worker")
    ensure_running(stack, "beat")
    receiver.reply("/pg", Reply(delay=2))
    [run] = run_now(stack, trigger_task(stack, f"{receiver.url}/pg"))
    receiver.wait_for("/pg", 1, timeout=30)
    postgres.ctl("restart")  # every connection is dropped while the action runs
    row = wait_until(lambda: finished(stack, run), timeout=90, message=stack.log_tail())
    assert row["status"] == "completed" and row["attempt"] == 1, row
    time.sleep(3)
    assert len(receiver.received("/pg")) == 1
    # The processes came through it.
    assert stack.processes["worker"].poll() is None, stack.log_tail()
    [again] = run_now(stack, trigger_task(stack, f"{receiver.url}/pg-after"))
    assert wait_until(lambda: finished(stack, again), timeout=30, message=stack.log_tail())


def test_a_retry_delay_longer_than_the_visibility_timeout_never_runs_twice(
    stack: Stack, receiver: Receiver
) -> None:
    ensure_running(stack, "worker")
    ensure_running(stack, "beat")
    receiver.reply("/late-retry", Reply(status=503, times=1), Reply(status=200))
    task_id = trigger_task(
        stack,
        f"{receiver.url}/late-retry",
        retry_policy={"maxRetries": 2, "backoffMs": 25_000, "jitter": 0},
    )
    [run] = run_now(stack, task_id)
    # The retry waits 25 s in the worker; Redis hands the unacknowledged message to a
    # consumer again after 10 s (the visibility timeout), so it arrives more than once.
    row = wait_until(lambda: finished(stack, run), timeout=120, message=stack.log_tail())
    assert row["status"] == "completed" and row["attempt"] == 2, row
    time.sleep(12)  # any late duplicate has had its chance
    sent = keys(receiver, "/late-retry")
    assert len(sent) == 2 and len(set(sent)) == 1  # one failure, one success, one key


ROLLBACK = """
from django.db import transaction
from django.contrib.auth import get_user_model
from tasks_app.models import ScheduledTask, TaskExecution
from tasks_app.services.definitions import task_create
from tasks_app.services.dispatch import task_run_now
owner, _ = get_user_model().objects.get_or_create(username="it")
class Abort(Exception):
    pass
try:
    with transaction.atomic():
        task = task_create(owner=owner, name="rolled back", type="trigger",
                           trigger={"type": "event", "config": {"event": "x"}},
                           action={"type": "webhook", "url": URL})
        task_run_now(task=task)
        raise Abort()
except Abort:
    pass
result = [ScheduledTask.objects.filter(name="rolled back").count(),
          TaskExecution.objects.filter(task__name="rolled back").count()]
"""


def test_a_rolled_back_transaction_enqueues_nothing(stack: Stack, receiver: Receiver) -> None:
    ensure_running(stack, "worker")
    assert stack.orm(f"URL = {receiver.url + '/rolled-back'!r}\n{ROLLBACK}") == [0, 0]
    time.sleep(4)
    assert receiver.received("/rolled-back") == []
