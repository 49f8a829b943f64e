"""Beat scheduler cost with N active recurring tasks: django-celery-beat's stock
``DatabaseScheduler`` beside the project's ``tasks_app.beat.Scheduler`` (the default).

    .venv/bin/python -m bench.scheduler --n 1000 10000 100000

Creates a fresh PostgreSQL database (dropped at the end) and bulk-creates active
recurring tasks with the beat rows the schedule sync gives them (bench/data.py):
"m h * * *" over eight timezones, none firing within the next 70 minutes. Each scheduler
then runs in a fresh subprocess (broker ``memory://``, no static beat entries) that
measures: start-up (construct + first load) and memory after it; five seconds of its
idle loop (tick, then sleep as the tick asks, like ``celery beat``); and, with the loop
running, the time from a committed change until the scheduler holds it, for a cron
edit, a pause and a new task (changed through the task services, as the API does),
with the longest tick meanwhile.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from bench.data import (
    TIMEZONES,
    add_recurring,
    bench_user,
    scratch_database,
    setup_django,
    status_kib,
)

MARK = "@@BENCH@@"
SCHEDULERS = {
    "stock": "django_celery_beat.schedulers:DatabaseScheduler",
    "project": "tasks_app.beat:Scheduler",
}
QUIET = timedelta(minutes=70)  # no generated cron fires this soon
IDLE_SECONDS = 5.0
CHANGE_TIMEOUT = 60.0


def quiet_cron(rng: random.Random, tz: str, now: datetime, within: timedelta | None = None) -> str:
    """A daily "m h * * *" whose next fire in ``tz`` is more than QUIET away (and less
    than ``within``, if given)."""
    local = now.astimezone(ZoneInfo(tz))
    while True:
        minute, hour = rng.randrange(60), rng.randrange(24)
        fire = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if fire <= local:
            fire += timedelta(days=1)
        if fire - local > QUIET and (within is None or fire - local < within):
            return f"{minute} {hour} * * *"


def build_tasks(count: int, rng: random.Random) -> float:
    """Add ``count`` active recurring tasks with their beat rows; returns seconds taken."""
    started = time.monotonic()
    now = datetime.now(UTC)
    owner = bench_user()

    def cron_for(i: int) -> tuple[str, str]:
        tz = TIMEZONES[i % len(TIMEZONES)]
        return quiet_cron(rng, tz, now), tz

    add_recurring(count, cron_for, owner=owner, now=now)
    return time.monotonic() - started


def run_child(kind: str, database_url: str, seed: int) -> dict:
    env = {**os.environ, "DATABASE_URL": database_url, "CELERY_BROKER_URL": "memory://"}
    command = [sys.executable, "-m", "bench.scheduler", "--child", kind, "--seed", str(seed)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    return {"error": (done.stderr or done.stdout).strip().splitlines()[-5:]}


def beat_process_memory(kind: str, database_url: str, seconds: float) -> dict:
    """``celery beat`` itself (the command the Procfile and compose.yaml run) with this
    scheduler, for ``seconds``: its resident memory at the end and at its peak."""
    env = {**os.environ, "DATABASE_URL": database_url, "CELERY_BROKER_URL": "memory://"}
    command = [
        sys.executable, "-m", "celery", "-A", "scheduler_project", "beat",
        "-S", SCHEDULERS[kind], "--loglevel=WARNING", "--pidfile=",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(seconds)
        status = open(f"/proc/{process.pid}/status").read()  # noqa: SIM115
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return {
            "seconds": seconds,
            "alive": process.poll() is None,
            "rss_mib": int(fields["VmRSS"].split()[0]) / 1024,
            "hwm_mib": int(fields["VmHWM"].split()[0]) / 1024,
        }
    except (OSError, KeyError) as exc:
        return {"seconds": seconds, "alive": False, "error": repr(exc)}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


# --- child: one scheduler ------------------------------------------------------------


class Loop:
    """The scheduler's loop as ``celery beat`` runs it, one tick at a time."""

    def __init__(self, scheduler: object) -> None:
        self.scheduler = scheduler
        self.ticks: list[float] = []

    def step(self) -> None:
        started = time.perf_counter()
        interval = self.scheduler.tick()
        self.ticks.append((time.perf_counter() - started) * 1000)
        if interval and interval > 0:
            time.sleep(min(interval, 0.05))  # wake often enough to notice the change

    def run_for(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            started = time.perf_counter()
            interval = self.scheduler.tick()
            self.ticks.append((time.perf_counter() - started) * 1000)
            if interval and interval > 0:
                time.sleep(min(interval, max(until - time.monotonic(), 0)))


def held(kind: str, scheduler: object, periodic_pk: int, name: str) -> object | None:
    """What the scheduler holds of one row: its slot or entry (None: not scheduled)."""
    if kind == "project":
        return scheduler._slots.get(periodic_pk)
    return (scheduler._schedule or {}).get(name)


def held_changed(kind: str, thing: object) -> datetime:
    return thing.changed if kind == "project" else thing.model.date_changed


def time_to_effect(kind: str, scheduler: object, change: str, rng: random.Random) -> dict:
    """Commit one change through the task services, then run the loop until the
    scheduler holds it: seconds, ticks and the longest tick meanwhile."""
    from tasks_app.models import ScheduledTask, TaskType
    from tasks_app.services.definitions import task_create, task_pause, task_update

    now = datetime.now(UTC)
    # Inside django-celery-beat's +-2 h window, so the stock scheduler loads it at all.
    soon = timedelta(minutes=115)
    if change == "new":
        task = task_create(
            owner=bench_user(),
            name="bench new",
            type=TaskType.RECURRING,
            cron=quiet_cron(rng, "UTC", now, soon),
            timezone="UTC",
            action={"type": "webhook", "url": "https://example.com/bench"},
        )
    else:
        task = ScheduledTask.objects.filter(timezone="UTC").order_by("?").first()
        if change == "edit":
            new_cron = quiet_cron(rng, task.timezone, now, soon)
            while new_cron == task.cron:
                new_cron = quiet_cron(rng, task.timezone, now, soon)
            task_update(task=task, cron=new_cron)
        else:
            task_pause(task=task, reason="bench")
    committed = time.perf_counter()
    row = type(task).objects.select_related("periodic_task").get(pk=task.pk).periodic_task
    loop = Loop(scheduler)
    while time.perf_counter() - committed < CHANGE_TIMEOUT:
        loop.step()
        thing = held(kind, scheduler, row.pk, row.name)
        if change == "pause" and thing is None:
            break
        if (
            change != "pause"
            and thing is not None
            and held_changed(kind, thing) == row.date_changed
        ):
            break
    else:
        return {"seconds": None, "ticks": len(loop.ticks), "max_tick_ms": max(loop.ticks)}
    return {
        "seconds": time.perf_counter() - committed,
        "ticks": len(loop.ticks),
        "max_tick_ms": max(loop.ticks),
    }


def measure(kind: str, seed: int) -> dict:
    from celery.utils.imports import symbol_by_name
    from django_celery_beat.models import PeriodicTask

    from scheduler_project.celery import app

    app.conf.beat_schedule = {}  # only the tasks' rows: nothing of ours is due
    cls = symbol_by_name(SCHEDULERS[kind])
    PeriodicTask.objects.exists()  # connect first: the connection is not the scheduler's
    rss_before = status_kib("VmRSS")

    started = time.perf_counter()
    scheduler = cls(app=app, lazy=False)
    scheduler.schedule  # noqa: B018 - the stock scheduler loads here
    loaded = time.perf_counter()
    rss_after = status_kib("VmRSS")
    entries = len(scheduler._slots) + len(scheduler._generic) if kind == "project" else None
    if entries is None:
        entries = len(scheduler._schedule)

    idle = Loop(scheduler)
    idle.run_for(IDLE_SECONDS)
    ticks = sorted(idle.ticks)

    rng = random.Random(seed)
    effects = {change: time_to_effect(kind, scheduler, change, rng) for change in CHANGES}
    return {
        "kind": kind,
        "entries": entries,
        "periodic_rows": PeriodicTask.objects.filter(enabled=True).count(),
        "startup_s": loaded - started,
        "rss_before_mib": rss_before / 1024,
        "rss_after_mib": rss_after / 1024,
        "rss_peak_mib": status_kib("VmHWM") / 1024,
        "idle_ticks": len(ticks),
        "tick_p50_ms": statistics.median(ticks),
        "tick_p99_ms": ticks[math.ceil(0.99 * len(ticks)) - 1],  # nearest rank
        "tick_max_ms": ticks[-1],
        "effects": effects,
    }


CHANGES = ("edit", "pause", "new")


# --- report --------------------------------------------------------------------------


def _effect(change: str):
    def cell(r: dict) -> str:
        effect = r["effects"][change]
        if effect["seconds"] is None:
            return f"not within {CHANGE_TIMEOUT:.0f} s (max tick {effect['max_tick_ms']:.0f} ms)"
        return f"{effect['seconds']:.3f} s (max tick {effect['max_tick_ms']:.1f} ms)"

    return cell


ROWS = [
    (
        "entries held (of enabled rows)",
        lambda r: f"{r['entries']} of {r['periodic_rows']}",
    ),
    ("start-up (construct + load)", lambda r: f"{r['startup_s']:.2f} s"),
    ("RSS after Django set-up", lambda r: f"{r['rss_before_mib']:.0f} MiB"),
    ("RSS after load", lambda r: f"{r['rss_after_mib']:.0f} MiB"),
    ("RSS peak (VmHWM, whole run)", lambda r: f"{r['rss_peak_mib']:.0f} MiB"),
    (
        "`celery beat` process: RSS / peak",
        lambda r: (
            f"{r['process']['rss_mib']:.0f} / {r['process']['hwm_mib']:.0f} MiB "
            f"after {r['process']['seconds']:.0f} s"
            if "rss_mib" in r.get("process", {})
            else "failed"
        ),
    ),
    (f"idle loop {IDLE_SECONDS:.0f} s: ticks", lambda r: str(r["idle_ticks"])),
    ("idle tick p50", lambda r: f"{r['tick_p50_ms']:.3f} ms"),
    ("idle tick p99", lambda r: f"{r['tick_p99_ms']:.2f} ms"),
    ("idle tick max", lambda r: f"{r['tick_max_ms']:.2f} ms"),
    ("cron edit held after", _effect("edit")),
    ("pause held after", _effect("pause")),
    ("new task held after", _effect("new")),
]


def table(n: int, results: dict[str, dict]) -> str:
    lines = [
        f"| N = {n} | stock DatabaseScheduler | tasks_app.beat.Scheduler |",
        "|---|---|---|",
    ]
    for label, fmt in ROWS:
        cells = [fmt(results[k]) if "error" not in results[k] else "failed" for k in SCHEDULERS]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", choices=sorted(SCHEDULERS), help="run one scheduler")
    parser.add_argument("--keep", action="store_true", help="keep the database (its URL printed)")
    parser.add_argument("--reuse", metavar="DATABASE_URL", help="measure a kept database")
    parser.add_argument("--child", choices=sorted(SCHEDULERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        setup_django(os.environ["DATABASE_URL"])
        print(MARK + json.dumps(measure(args.child, args.seed)), flush=True)
        return

    kinds = [args.only] if args.only else list(SCHEDULERS)
    if args.reuse:  # a database an earlier run built (kept with --keep): no build
        setup_django(args.reuse)
        from tasks_app.models import ScheduledTask

        n = ScheduledTask.objects.count()
        report(n, 0.0, kinds, args.reuse, args.seed)
        return
    with scratch_database("bench_sched", keep=args.keep) as database_url:
        from django.db import connections

        rng = random.Random(args.seed)
        have = 0
        for n in sorted(args.n):
            built = build_tasks(n - have, rng)
            have = n
            print(f"N={n}: data built in {built:.1f} s", flush=True)
            connections.close_all()
            report(n, built, kinds, database_url, args.seed)


def report(n: int, built: float, kinds: list[str], database_url: str, seed: int) -> None:
    results = {kind: run_child(kind, database_url, seed + n) for kind in kinds}
    settle = max(15.0, n / 2500)
    for kind in kinds:
        if "error" not in results[kind]:
            results[kind]["process"] = beat_process_memory(kind, database_url, settle)
    for kind, result in results.items():
        if "error" in result:
            print(f"{kind} failed: {result['error']}")
    if len(kinds) == len(SCHEDULERS):
        print(table(n, results), flush=True)
    print(MARK + json.dumps({"n": n, "build_s": built, **results}), flush=True)


if __name__ == "__main__":
    main()
