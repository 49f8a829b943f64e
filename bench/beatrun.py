"""Shared by the beat benchmarks (``bench.burst``, ``bench.lateness``): a beat scheduler run
in a subprocess on real Redis, ticking as celery beat's ``Service.start`` does, and a
real Celery worker, both on a private queue.

* ``python -m bench.beatrun --kind stock|project --queue Q [--expect N] [--until EPOCH]``
  (started by the benchmarks): builds the scheduler as ``celery beat`` would (static
  ``beat_schedule`` emptied), prints a ``READY`` line with its load time and memory, then
  loops ``interval = scheduler.tick(); sleep(interval)`` until ``N`` run messages were
  sent or ``EPOCH`` passed (a later ``until <epoch>`` line on stdin moves the end), and
  prints every tick's duration (less the time ours waited on purpose for the time of a
  run it had decided ahead), every run message's send time, its CPU and memory.
  Sends are counted by wrapping ``app.amqp.send_task_message`` (what every
  ``apply_async`` of either scheduler goes through), after the publish returned, or,
  for a message in a publish batch (ours on Redis), when the batch was flushed.
* ``celery -A bench.beatrun worker -Q Q``: the project's Celery app with ``BENCH_QUEUE``
  as its default queue (so whatever the worker sends stays on the private queue).

The stock ``DatabaseScheduler`` sends our rows as ``run_task(task_id=...)``, a message the
worker ignores (it names no execution and no occurrence). So that the worker records and
runs them through the same fallback the project's beat uses when it cannot reach the
database (``tasks.run_task`` without ``execution_id``), the bench adds
``scheduled_for`` (the entry's occurrence: the clocked time, or the cron's latest time)
to the stock scheduler's messages. Nothing else of the stock scheduler is changed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.data import status_kib
from scheduler_project.celery import app

if os.environ.get("BENCH_QUEUE"):
    app.conf.task_default_queue = os.environ["BENCH_QUEUE"]

ROOT = Path(__file__).resolve().parents[1]
MARK = "@@BEAT@@"
READY = "@@READY@@"
SCHEDULERS = {
    "stock": "django_celery_beat.schedulers:DatabaseScheduler",
    "project": "tasks_app.beat:Scheduler",
}
LABELS = {"stock": "stock DatabaseScheduler", "project": "tasks_app.beat.Scheduler"}


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


# --- child: one scheduler ------------------------------------------------------------


def _stock_occurrences() -> Any:
    """``entry -> occurrence`` for the stock scheduler's run_task messages."""
    from datetime import UTC, datetime

    from tasks_app import cron as cronlib

    crons: dict[tuple[str, str], Any] = {}

    def occurrence(entry: Any) -> datetime | None:
        model = getattr(entry, "model", None)
        if model is None:
            return None
        if model.clocked_id:
            return model.clocked.clocked_time
        if model.crontab_id:
            tab = model.crontab
            key = (
                " ".join(
                    (tab.minute, tab.hour, tab.day_of_month, tab.month_of_year, tab.day_of_week)
                ),
                str(tab.timezone),
            )
            if key not in crons:
                crons[key] = cronlib.Cron(*key)
            return crons[key].latest_at_or_before(datetime.now(UTC))
        return None

    return occurrence


def run_beat(kind: str, expect: int | None, until: float | None, keys: bool) -> dict[str, Any]:
    import django

    django.setup()
    from celery.utils.imports import symbol_by_name
    from django_celery_beat.models import PeriodicTask

    from tasks_app.conf import RUN_TASK_NAME

    app.conf.beat_schedule = {}  # only the tasks' rows
    sends: list[tuple[float, str]] = []
    original = app.amqp.send_task_message

    batched: list[str] = []  # run messages in a publish batch, sent when it is flushed

    def send_task_message(producer: Any, name: str, message: Any, **options: Any) -> Any:
        result = original(producer, name, message, **options)
        if name == RUN_TASK_NAME:
            kwargs = message.body[1] if isinstance(message.body, tuple | list) else {}
            key = kwargs.get("execution_id") or kwargs.get("task_id")
            if getattr(getattr(producer, "_batch_local", None), "current", None) is not None:
                batched.append(key)
            else:
                sends.append((time.time(), key))
        return result

    def flush(batch: Any) -> Any:
        try:
            result = flush_batch(batch)
        except BaseException:
            batched.clear()  # (beat sends them again one by one)
            raise
        moment = time.time()
        sends.extend((moment, key) for key in batched)
        batched.clear()
        return result

    from kombu.transport.redis import PublishBatch

    def discard(batch: Any) -> Any:
        batched.clear()  # (an aborted batch: beat sends them again one by one)
        return discard_batch(batch)

    flush_batch, discard_batch = PublishBatch.flush, PublishBatch.discard
    PublishBatch.flush = flush  # type: ignore[method-assign]
    PublishBatch.discard = discard  # type: ignore[method-assign]
    app.amqp.send_task_message = send_task_message
    PeriodicTask.objects.exists()  # connect first: the connection is not the scheduler's
    rss_setup = status_kib("VmRSS")
    began = time.perf_counter()
    scheduler = symbol_by_name(SCHEDULERS[kind])(
        app=app, schedule_filename=app.conf.beat_schedule_filename, max_interval=None, lazy=False
    )
    scheduler.schedule  # noqa: B018 - the first read (stock: already loaded by set-up)
    load_s = time.perf_counter() - began
    if kind == "stock":
        occurrence_of = _stock_occurrences()
        stock_apply = scheduler.apply_async

        def apply_async(entry: Any, producer: Any = None, advance: bool = True, **kw: Any) -> Any:
            if not advance and entry.task == RUN_TASK_NAME and "scheduled_for" not in entry.kwargs:
                moment = occurrence_of(entry)
                if moment is not None:
                    entry = _with_kwargs(entry, {**entry.kwargs, "scheduled_for": moment})
            return stock_apply(entry, producer, advance, **kw)

        scheduler.apply_async = apply_async
    if os.environ.get("BENCH_PHASES") and kind == "project":
        _time_phases(scheduler)
    ready = {"load_s": load_s, "rss_setup_mib": rss_setup / 1024}
    ready["rss_load_mib"] = status_kib("VmRSS") / 1024
    ready["loaded_at"] = time.time()
    print(READY + json.dumps(ready), flush=True)

    end = [until]

    def read_stdin() -> None:
        for line in sys.stdin:
            if line.startswith("until "):
                end[0] = float(line.split()[1])

    threading.Thread(target=read_stdin, daemon=True).start()
    ticks: list[tuple[float, float, float]] = []
    pauses = _gc_pauses()
    cpu0, wall0 = cpu_seconds(), time.time()
    while True:
        now = time.time()
        if (expect is not None and len(sends) >= expect) or (end[0] is not None and now >= end[0]):
            break
        started = time.perf_counter()
        interval = scheduler.tick()
        # (ours waits on purpose inside a tick for the time of a run it decided ahead:
        # not a stall, not counted)
        took = time.perf_counter() - started - getattr(scheduler, "waited", 0.0)
        ticks.append((now, took, cpu_seconds()))
        if interval and interval > 0.0:
            if end[0] is not None:
                interval = max(min(interval, end[0] - time.time()), 0.0)
            time.sleep(interval)
            if scheduler.should_sync():
                scheduler._do_sync()
    wall = time.time() - wall0
    cpu = cpu_seconds() - cpu0
    result = {
        "kind": kind,
        **ready,
        "loop_s": wall,
        "cpu_s": cpu,
        "cpu_pct": 100 * cpu / wall if wall else 0.0,
        "rss_end_mib": status_kib("VmRSS") / 1024,
        "hwm_mib": status_kib("VmHWM") / 1024,
        "ticks": [[round(t, 4), round(d, 6), round(c, 3)] for t, d, c in ticks],
        "sends": [[round(t, 4), k] for t, k in sends] if keys else [round(t, 4) for t, _ in sends],
        "gc_pauses": pauses,
        "phases": PHASES,
    }
    print(MARK + json.dumps(result), flush=True)
    os._exit(0)  # no beat close-down (stock's Finalize would sync more rows)


PHASES: list[list[Any]] = []


def _time_phases(scheduler: Any) -> None:
    import tasks_app.beat as ours

    def timed(owner: Any, name: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                PHASES.append(
                    [round(time.time(), 4), name, round((time.perf_counter() - t) * 1000, 2)]
                )

        setattr(owner, name, wrapper)

    for name in ("_recheck", "_send", "_bookkeep", "_apply"):
        timed(scheduler, name)
    timed(ours.occurrences, "occurrences_fire")
    timed(ours, "close_old_connections")


def _gc_pauses() -> list[list[float]]:
    """From now on, every collection of Python's cyclic garbage collector that held the
    process 1 ms or more: [epoch, generation, ms]."""
    import gc

    pauses: list[list[float]] = []
    began = [0.0]

    def watch(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
            return
        took = (time.perf_counter() - began[0]) * 1000
        if took >= 1.0:
            pauses.append([round(time.time(), 4), info["generation"], round(took, 2)])

    gc.callbacks.append(watch)
    return pauses


def _with_kwargs(entry: Any, kwargs: dict[str, Any]) -> Any:
    """What celery's ``Scheduler.apply_async`` reads of an entry, with other kwargs."""
    from types import SimpleNamespace

    kwargs = {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in kwargs.items()}
    return SimpleNamespace(
        name=entry.name, task=entry.task, args=entry.args, kwargs=kwargs, options=entry.options
    )


# --- parent side ---------------------------------------------------------------------


def child_env(database_url: str, broker_url: str, queue: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "CELERY_", "SCHEDULER_", "DJANGO_"))
    }
    env.update(
        {
            "DATABASE_URL": database_url,
            "CELERY_BROKER_URL": broker_url,
            "BENCH_QUEUE": queue,
            "SCHEDULER_EGRESS_ALLOW": "127.0.0.1",  # the loopback receiver
            "PYTHONUNBUFFERED": "1",
            "DJANGO_SETTINGS_MODULE": "scheduler_project.settings",
        }
    )
    return env


class Beat:
    """One scheduler subprocess."""

    def __init__(
        self,
        kind: str,
        env: dict[str, str],
        log: Path,
        *,
        expect: int | None = None,
        until: float | None = None,
        keys: bool = False,
    ) -> None:
        command = [sys.executable, "-m", "bench.beatrun", "--kind", kind]
        command += ["--queue", env["BENCH_QUEUE"]]
        if expect is not None:
            command += ["--expect", str(expect)]
        if until is not None:
            command += ["--until", repr(until)]
        if keys:
            command.append("--keys")
        self.log = log
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log.open("ab"),
            text=True,
            start_new_session=True,
        )
        self.ready: dict[str, Any] | None = None
        self.result: dict[str, Any] | None = None
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(READY):
                self.ready = json.loads(line[len(READY) :])
                self._ready.set()
            elif line.startswith(MARK):
                self.result = json.loads(line[len(MARK) :])
        self._ready.set()

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        if not self._ready.wait(timeout) or self.ready is None:
            raise RuntimeError(f"beat did not load within {timeout:.0f} s: {self.tail()}")
        return self.ready

    def set_until(self, epoch: float) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"until {epoch!r}\n")
        self.process.stdin.flush()

    def wait(self, timeout: float) -> dict[str, Any]:
        self.process.wait(timeout=timeout)
        self._reader.join(timeout=30)
        if self.result is None:
            raise RuntimeError(f"beat gave no result: {self.tail()}")
        return self.result

    def tail(self) -> str:
        return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-8:])

    def stop(self) -> None:
        stop_group(self.process)


class Worker:
    """``celery -A bench.beatrun worker -Q <queue> -c <concurrency>``."""

    def __init__(self, env: dict[str, str], log: Path, concurrency: int = 2) -> None:
        queue = env["BENCH_QUEUE"]
        command = [sys.executable, "-m", "celery", "-A", "bench.beatrun", "worker"]
        command += ["-Q", queue, "-c", str(concurrency), "--loglevel=INFO"]
        command += ["-n", f"{queue}@%h", "--without-gossip", "--without-mingle"]
        self.log = log
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log.read_text(errors="replace"):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready: {self.log}")

    def stop(self) -> None:
        stop_group(self.process)


def stop_group(process: subprocess.Popen, timeout: float = 20) -> None:
    """End a process we started (its own session) and its children, by its id."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=timeout)
        except ProcessLookupError:
            pass
    try:  # a pool process left behind by its parent
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def new_queue(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def redis_client(broker_url: str) -> Any:
    import redis

    return redis.Redis.from_url(broker_url)


def redis_forget(broker_url: str, queue: str) -> None:
    """Delete the keys of our private queue (the Redis database may hold others')."""
    client = redis_client(broker_url)
    names = [queue, f"_kombu.binding.{queue}"]
    names += [key for key in client.scan_iter(match=f"*{queue}*", count=1000)]
    client.delete(*names)


def tick_stats(ticks: list[list[float]], since: float | None = None) -> dict[str, Any]:
    chosen = sorted(tick[1] * 1000 for tick in ticks if since is None or tick[0] >= since)
    if not chosen:
        return {"ticks": 0}
    return {
        "ticks": len(chosen),
        "tick_p50_ms": chosen[len(chosen) // 2],
        "tick_p99_ms": chosen[min(len(chosen) - 1, int(0.99 * len(chosen)))],
        "tick_max_ms": chosen[-1],
        "ticks_over_100ms": sum(1 for d in chosen if d > 100),
    }


def gc_stats(pauses: list[list[float]]) -> dict[str, Any]:
    """The cyclic garbage collector's pauses of 1 ms or more: how many, the longest."""
    return {
        "gc_pauses": len(pauses),
        "gc_max_ms": max((pause[2] for pause in pauses), default=0.0),
        "gc_full": sum(1 for pause in pauses if pause[1] == 2),
    }


def cpu_between(ticks: list[list[float]], since: float, until: float) -> float | None:
    """Beat's CPU use (percent of one core) from the end of the last tick begun before
    ``since`` to the end of the last tick begun by ``until``."""
    before = [tick for tick in ticks if tick[0] < since]
    inside = [tick for tick in ticks if since <= tick[0] <= until]
    if not before or not inside:
        return None
    base, last = before[-1], inside[-1]
    wall = (last[0] + last[1]) - (base[0] + base[1])
    return 100 * (last[2] - base[2]) / wall if wall > 0 else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=sorted(SCHEDULERS), required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--expect", type=int)
    parser.add_argument("--until", type=float)
    parser.add_argument("--keys", action="store_true", help="name each run message sent")
    args = parser.parse_args()
    run_beat(args.kind, args.expect, args.until, args.keys)


if __name__ == "__main__":
    main()
