"""Throughput of "run now" executions with full records, beside bare Celery (issue 9).

    .venv/bin/python -m bench.throughput --mode postgres-redis -n 1000
    .venv/bin/python -m bench.throughput --mode embedded -n 300 --no-baseline

One run, one machine, one broker, in this order:

1. bare Celery (``bench.celery_baseline``; postgres-redis mode only): one producer
   publishes N no-op messages (enqueue rate), then one worker process with our
   concurrency, prefetch and ack settings drains them (drain rate); then K messages sent
   one at a time to the idle worker give the send->start latency. Then the same with
   ``bench.floor``, a task that writes two single-row UPDATEs per run: the ceiling of
   any design that records each run before and after its action.
2. ours: N "run now" executions of a trivial action published with no worker running
   (enqueue rate, inside one Django process), then the project's worker (Procfile) drains
   them: each execution gets its ledger row, claim, action, result, logs and the task's
   counters. Then K paced runs give queued->started latency on an idle worker.

The trivial action is ``file-operation`` ``list`` of the owner's directory (no network,
no subprocess) unless ``--action webhook`` (a POST to a loopback HTTP server).
Prints the rates, latencies and the ratios ours/bare and ours/floor of the drain rates.
Workers send no task events, as in production while no monitor watches; ``--events``
turns them on for every worker (what Flower does while it runs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.data import cpu_seconds, pids_named, process_tree
from tests.http_receiver import Receiver
from tests.integration.stack import Stack, procfile_commands, wait_until

ACTIONS = {
    "file": '{"type": "file-operation", "operation": "list"}',
    "webhook": '{"type": "webhook", "url": "URL/bench"}',
}

SETUP = """
from django.contrib.auth import get_user_model
from tasks_app.services.definitions import task_create
owner, _ = get_user_model().objects.get_or_create(username="bench")
ids = []
for name in ("bench", "bench-latency"):
    task = task_create(owner=owner, name=name, type="trigger",
                       trigger={{"type": "event", "config": {{"event": name}}}},
                       action={action})
    ids.append(str(task.id))
result = ids
"""

PUBLISH = """
import time
from tasks_app.models import ScheduledTask
from tasks_app.services.dispatch import task_run_now
task = ScheduledTask.objects.get(pk="{task_id}")
task_run_now(task=task)  # connections warm
began = time.monotonic()
for _ in range({n}):
    task_run_now(task=task)
    if {pause}:
        time.sleep({pause})
result = time.monotonic() - began
"""

WORKER_ARGS = "--loglevel=INFO --concurrency={concurrency}"


def _ts(value: object) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def _p(values: list[float], pct: int) -> float:
    # (inclusive: never beyond the largest value, as the default method can be)
    return (
        statistics.quantiles(values, n=100, method="inclusive")[pct - 1]
        if len(values) > 1
        else values[0]
    )


def _latency(values: list[float]) -> dict[str, float]:
    return {
        "latency_p50": _p(values, 50),
        "latency_p99": _p(values, 99),
        "latency_max": max(values),
    }


def _latency_text(figures: dict[str, Any]) -> str:
    return (
        f"p50 {figures['latency_p50']:.1f} ms, p99 {figures['latency_p99']:.1f} ms, "
        f"max {figures['latency_max']:.1f} ms"
    )


def _wait_ready(log: Path, timeout: float = 60) -> None:
    wait_until(
        lambda: log.exists() and " ready." in log.read_text(errors="replace"),
        timeout=timeout,
        interval=0.1,
        message=f"worker not ready: {log}",
    )


def bare_celery(
    stack: Stack, tmp: Path, n: int, k: int, concurrency: int, kind: str = "noop"
) -> dict[str, Any]:
    """Phase 1: the same broker, a no-op task (or the floor task), the same worker
    settings."""
    broker = stack.env["CELERY_BROKER_URL"]
    stamps_dir = tmp / f"stamps-{kind}"
    stamps_dir.mkdir()
    env = dict(
        stack.env,
        BENCH_BROKER_URL=broker,
        BENCH_STAMPS=str(stamps_dir),
        BENCH_DATABASE_URL=stack.env.get("DATABASE_URL", ""),
    )
    if kind == "floor":
        from bench.celery_baseline import floor_table

        floor_table(env["BENCH_DATABASE_URL"], n + k)
    publisher = subprocess.run(
        [sys.executable, "-c", _PUBLISH_BARE, str(n), "0", kind],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    enqueue = float(publisher.stdout.split()[-1])
    log = tmp / "bare-worker.log"
    worker = subprocess.Popen(
        [
            *(sys.executable, "-m", "celery", "-A", "bench.celery_baseline", "worker"),
            *WORKER_ARGS.format(concurrency=concurrency).split(),
            *(["-E"] if stack.env.get("CELERY_WORKER_SEND_TASK_EVENTS") == "true" else []),
        ],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    from bench.celery_baseline import stamps

    try:
        _wait_ready(log)
        cpu = _CpuMeter(worker.pid, lambda: len(stamps(stamps_dir)))
        wait_until(lambda: len(stamps(stamps_dir)) >= n, timeout=n, interval=0.1)
        cpu_ms = cpu.per_run_ms()
        # Latency on an idle worker: K messages sent one at a time, 20 ms apart.
        subprocess.run(
            [sys.executable, "-c", _PUBLISH_BARE, str(k), "0.02", kind],
            env=env,
            capture_output=True,
            check=True,
            timeout=600,
        )
        wait_until(lambda: len(stamps(stamps_dir)) >= n + k, timeout=60, interval=0.1)
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(timeout=30)
    rows = stamps(stamps_dir)
    backlog, paced = rows[:n], rows[n:]
    span = max(end for _, _, end in backlog) - min(start for _, start, _ in backlog)
    return {
        "enqueue": n / enqueue,
        "drain": n / span,
        **_latency([(start - sent) * 1000 for sent, start, _ in paced]),
        "run_p50": _p([(end - start) * 1000 for _, start, end in backlog], 50),
        "cpu_ms": cpu_ms,
    }


class _CpuMeter:
    """CPU time of the worker (main process, pool), PostgreSQL and Redis from now on, per
    run finished meanwhile: steadier than rates on a machine whose neighbours vary."""

    def __init__(self, worker_pid: int, finished: Callable[[], int]) -> None:
        self.worker_pid, self.finished = worker_pid, finished
        self.start = {name: cpu_seconds(pids) for name, pids in self._groups().items()}
        self.done = finished()

    def _groups(self) -> dict[str, list[int]]:
        return {
            "worker main": [self.worker_pid],
            "pool": process_tree(self.worker_pid)[1:],
            "postgres": pids_named("postgres"),
            "redis": pids_named("redis-server"),
        }

    def per_run_ms(self) -> dict[str, float]:
        """Milliseconds per run by process group, and ``total``."""
        runs = max(self.finished() - self.done, 1)
        spent = {
            name: (cpu_seconds(pids) - self.start.get(name, 0.0)) * 1000 / runs
            for name, pids in self._groups().items()
        }
        return {**spent, "total": sum(spent.values())}


_PUBLISH_BARE = """
import sys
from bench.celery_baseline import publish
n = int(sys.argv[1])
pause = float(sys.argv[2])
kind = sys.argv[3]
publish(1, kind=kind)  # connection warm (its stamp is counted: one extra message)
print(publish(n - 1, pause=pause, kind=kind) if n > 1 else 0.0)
"""


def ours(stack: Stack, tmp: Path, n: int, k: int, action: str, url: str) -> dict[str, Any]:
    """Phase 2: N "run now" executions with full records through the project's worker."""
    bench_id, latency_id = stack.orm(SETUP.format(action=ACTIONS[action].replace("URL", url)))
    publish_s = stack.orm(PUBLISH.format(task_id=bench_id, n=n - 1, pause=0))
    stack.start("worker", procfile_commands()["worker"])
    sql = "SELECT COUNT(*) FROM task_executions WHERE task_id = ? AND status = 'completed'"
    _wait_ready(stack.logs["worker"])
    began = time.monotonic()
    cpu = _CpuMeter(
        stack.processes["worker"].pid, lambda: stack.query(sql, (stack.id_param(bench_id),))[0][0]
    )
    wait_until(
        lambda: stack.query(sql, (stack.id_param(bench_id),))[0][0] >= n,
        timeout=n * 2,
        interval=0.2,
        message=f"ours: not all {n} executions completed",
    )
    wall = time.monotonic() - began
    cpu_ms = cpu.per_run_ms()
    stack.orm(PUBLISH.format(task_id=latency_id, n=k - 1, pause=0.05))
    wait_until(
        lambda: stack.query(sql, (stack.id_param(latency_id),))[0][0] >= k,
        timeout=60,
        interval=0.2,
    )
    rows = (
        "SELECT queued_at, started_at, completed_at, status FROM task_executions WHERE task_id = ?"
    )
    backlog = stack.query(rows, (stack.id_param(bench_id),))
    paced = stack.query(rows, (stack.id_param(latency_id),))
    assert all(status == "completed" for *_, status in backlog + paced)
    first = min(_ts(s) for _, s, _, _ in backlog)
    last = max(_ts(c) for _, _, c, _ in backlog)
    return {
        "enqueue": (n - 1) / publish_s,
        "drain": n / (last - first).total_seconds(),
        "wall_drain": n / wall,
        **_latency([(_ts(s) - _ts(q)).total_seconds() * 1000 for q, s, _, _ in paced]),
        "run_p50": _p([(_ts(c) - _ts(s)).total_seconds() * 1000 for _, s, c, _ in backlog], 50),
        "run_p99": _p([(_ts(c) - _ts(s)).total_seconds() * 1000 for _, s, c, _ in backlog], 99),
        "cpu_ms": cpu_ms,
    }


def _cpu(spent: dict[str, float]) -> str:
    parts = ", ".join(f"{name} {ms:.2f}" for name, ms in spent.items() if name != "total")
    return f"{spent['total']:.2f} ms/run ({parts})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["embedded", "postgres-redis"], default="postgres-redis")
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("-k", type=int, default=50, help="paced messages for the latency")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--action", choices=sorted(ACTIONS), default="file")
    parser.add_argument("--no-baseline", action="store_true", help="skip bare Celery")
    parser.add_argument("--events", action="store_true", help="workers send task events")
    args = parser.parse_args()
    action = {
        "file": 'file-operation "list" of the owner\'s directory',
        "webhook": "webhook POST to a loopback HTTP server",
    }[args.action]
    with tempfile.TemporaryDirectory() as tmp_name, Receiver() as http:
        tmp = Path(tmp_name)
        stack = Stack(args.mode, tmp)
        stack.env["WORKER_CONCURRENCY"] = str(args.concurrency)
        stack.env["CELERY_WORKER_SEND_TASK_EVENTS"] = "true" if args.events else "false"
        try:
            stack.manage("migrate", "--noinput")
            bare = floor = None
            if not args.no_baseline and args.mode == "postgres-redis":
                bare = bare_celery(stack, tmp, args.n, args.k, args.concurrency)
                floor = bare_celery(stack, tmp, args.n, args.k, args.concurrency, "floor")
            mine = ours(stack, tmp, args.n, args.k, args.action, http.url)
        finally:
            stack.stop()
    events = "on" if args.events else "off"
    cores = os.cpu_count() or 1
    print(
        f"mode={args.mode} n={args.n} k={args.k} worker: prefork concurrency={args.concurrency} "
        f"prefetch 1, acks late, task events {events}"
    )
    if bare:
        print(f"bare Celery (no-op task, no result backend, task events {events}):")
        print(
            f"  enqueue {bare['enqueue']:.0f}/s  drain {bare['drain']:.0f}/s  "
            f"send->start {_latency_text(bare)} (idle worker)  "
            f"run p50 {bare['run_p50']:.2f} ms  CPU {_cpu(bare['cpu_ms'])}"
        )
    if floor and bare:
        print(
            "the floor of any exactly-once ledger (bare Celery + two single-row UPDATEs per run):"
        )
        print(
            f"  drain {floor['drain']:.0f}/s = {floor['drain'] / bare['drain']:.1%} of bare Celery"
            f"  CPU {_cpu(floor['cpu_ms'])}"
        )
    print(f"ours ({action}; full records):")
    print(
        f"  enqueue {mine['enqueue']:.1f}/s  drain {mine['drain']:.1f}/s "
        f"(first start to last completion; {mine['wall_drain']:.1f}/s from worker ready)  "
        f"queued->started {_latency_text(mine)} (idle worker)"
    )
    print(f"  claim->recorded p50 {mine['run_p50']:.1f} ms  p99 {mine['run_p99']:.1f} ms")
    print(
        f"  CPU {_cpu(mine['cpu_ms'])}; {cores * 1000 / mine['cpu_ms']['total']:.0f}/s "
        f"would fill the {cores} cores"
    )
    if bare:
        print(
            f"ratio ours/bare: drain {mine['drain'] / bare['drain']:.1%}  "
            f"enqueue {mine['enqueue'] / bare['enqueue']:.1%}"
        )
    if floor:
        print(f"ratio ours/floor: drain {mine['drain'] / floor['drain']:.1%}")
    if args.action == "webhook":
        print(f"receiver saw {len(http.received('/bench'))} requests")


if __name__ == "__main__":
    main()
