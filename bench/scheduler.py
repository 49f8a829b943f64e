"""Beat scheduler cost with N active recurring tasks: django-celery-beat's stock
``DatabaseScheduler`` beside the project's ``tasks_app.beat.Scheduler`` (the default).

    .venv/bin/python -m bench.scheduler --n 1000 10000

Creates a fresh PostgreSQL database ``bench_sched_<random>`` (dropped at the end), runs
migrate, bulk-creates ScheduledTask rows ("m h * * *" in several timezones, none firing
within the next 70 minutes) and gives each its beat row with ``schedule_sync`` (the
project's own path). Each scheduler then runs in a fresh subprocess (Celery broker
``memory://``, no static beat entries) that measures: construction + first load of the
schedule and VmRSS after it; ``tick()`` with nothing due; and the tick after one task's
cron is edited through ``task_update`` (that tick reloads the whole schedule).
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
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from tests.services import POSTGRES_URL

MARK = "@@BENCH@@"
SCHEDULERS = {
    "stock": "django_celery_beat.schedulers:DatabaseScheduler",
    "project": "tasks_app.beat:Scheduler",
}
TIMEZONES = [
    "UTC",
    "Europe/London",
    "Europe/Berlin",
    "America/New_York",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "Asia/Kolkata",
    "Australia/Sydney",
]
QUIET = timedelta(minutes=70)  # no generated cron fires this soon
TICKS = 50


def quiet_cron(rng: random.Random, tz: str, now: datetime) -> str:
    """A daily "m h * * *" whose next fire in ``tz`` is more than QUIET away."""
    local = now.astimezone(ZoneInfo(tz))
    while True:
        minute, hour = rng.randrange(60), rng.randrange(24)
        fire = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if fire <= local:
            fire += timedelta(days=1)
        if fire - local > QUIET:
            return f"{minute} {hour} * * *"


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def setup_django(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ["CELERY_BROKER_URL"] = "memory://"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scheduler_project.settings")
    import django

    django.setup()


# --- parent: database and data -------------------------------------------------------


def admin_sql(sql: str) -> None:
    import psycopg

    with psycopg.connect(f"{POSTGRES_URL}/postgres", autocommit=True) as conn:
        conn.execute(sql)


def build_tasks(count: int, rng: random.Random) -> float:
    """Add ``count`` active recurring tasks with their beat rows; returns seconds taken."""
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from tasks_app.models import ScheduledTask, TaskStatus, TaskType
    from tasks_app.services.schedules import schedule_sync

    started = time.monotonic()
    owner, _ = get_user_model().objects.get_or_create(username="bench")
    now = datetime.now(UTC)
    rows = []
    for i in range(count):
        tz = TIMEZONES[i % len(TIMEZONES)]
        rows.append(
            ScheduledTask(
                owner=owner,
                name=f"bench {uuid.uuid4().hex[:8]}",
                type=TaskType.RECURRING,
                cron=quiet_cron(rng, tz, now),
                timezone=tz,
                action={"type": "webhook", "url": "https://example.com/bench"},
                status=TaskStatus.ACTIVE,
            )
        )
    with transaction.atomic():
        created = ScheduledTask.objects.bulk_create(rows, batch_size=1000)
        for task in created:
            schedule_sync(task=task)
    return time.monotonic() - started


def run_child(kind: str, database_url: str, seed: int) -> dict:
    env = {**os.environ, "DATABASE_URL": database_url, "CELERY_BROKER_URL": "memory://"}
    command = [sys.executable, "-m", "bench.scheduler", "--child", kind, "--seed", str(seed)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    return {"error": (done.stderr or done.stdout).strip().splitlines()[-5:]}


# --- child: one scheduler ------------------------------------------------------------


def measure(kind: str, seed: int) -> dict:
    from celery.utils.imports import symbol_by_name
    from django_celery_beat.models import PeriodicTask

    from scheduler_project.celery import app
    from tasks_app.models import ScheduledTask
    from tasks_app.services.definitions import task_update

    app.conf.beat_schedule = {}  # only the tasks' rows: nothing of ours is due
    cls = symbol_by_name(SCHEDULERS[kind])
    PeriodicTask.objects.exists()  # connect first: the connection is not the scheduler's
    rss_before = rss_kib()

    started = time.perf_counter()
    scheduler = cls(app=app, lazy=False)
    constructed = time.perf_counter()
    schedule = scheduler.schedule
    loaded = time.perf_counter()
    rss_after = rss_kib()
    first_tick = time.perf_counter()
    scheduler.tick()
    first_tick = time.perf_counter() - first_tick
    sent_before = scheduler._tasks_since_sync if hasattr(scheduler, "_tasks_since_sync") else 0

    ticks = []
    for _ in range(TICKS):
        t = time.perf_counter()
        scheduler.tick()
        ticks.append((time.perf_counter() - t) * 1000)
    ticks.sort()
    due = [
        name
        for name, entry in scheduler.schedule.items()
        if entry.is_due().is_due  # nothing may be due, or the ticks measured sends
    ]

    rng = random.Random(seed)
    task = ScheduledTask.objects.order_by("?").first()
    old_crontab = task.periodic_task.crontab_id
    new_cron = quiet_cron(rng, task.timezone, datetime.now(UTC))
    while new_cron == task.cron:
        new_cron = quiet_cron(rng, task.timezone, datetime.now(UTC))
    edit = time.perf_counter()
    task_update(task=task, cron=new_cron)
    edit = (time.perf_counter() - edit) * 1000
    before = scheduler._schedule
    edit_ticks = []
    while scheduler._schedule is before and len(edit_ticks) < 5:
        t = time.perf_counter()
        scheduler.tick()
        edit_ticks.append((time.perf_counter() - t) * 1000)
    reloaded = scheduler._schedule is not before
    task.periodic_task.refresh_from_db()
    return {
        "kind": kind,
        "entries": len(schedule),
        "periodic_rows": PeriodicTask.objects.filter(enabled=True).count(),
        "construct_s": constructed - started,
        "load_s": loaded - constructed,
        "startup_s": loaded - started,
        "rss_before_mib": rss_before / 1024,
        "rss_after_mib": rss_after / 1024,
        "first_tick_ms": first_tick * 1000,
        "tick_p50_ms": statistics.median(ticks),
        "tick_p99_ms": ticks[math.ceil(0.99 * len(ticks)) - 1],  # nearest rank
        "tick_max_ms": ticks[-1],
        "due_entries": due,
        "sent": sent_before,
        "edit_ms": edit,
        "edit_crontab_changed": task.periodic_task.crontab_id != old_crontab,
        "reloaded": reloaded,
        "ticks_until_reload": len(edit_ticks),
        "reload_tick_ms": edit_ticks[-1] if reloaded else None,
    }


# --- report --------------------------------------------------------------------------


ROWS = [
    (
        "entries loaded (of enabled PeriodicTask rows)",
        lambda r: f"{r['entries']} of {r['periodic_rows']}",
    ),
    ("start-up: construct", lambda r: f"{r['construct_s']:.3f} s"),
    ("start-up: first .schedule", lambda r: f"{r['load_s']:.3f} s"),
    ("start-up: total", lambda r: f"{r['startup_s']:.3f} s"),
    ("VmRSS after Django set-up", lambda r: f"{r['rss_before_mib']:.1f} MiB"),
    ("VmRSS after load", lambda r: f"{r['rss_after_mib']:.1f} MiB"),
    ("first tick", lambda r: f"{r['first_tick_ms']:.1f} ms"),
    (f"idle tick p50 ({TICKS})", lambda r: f"{r['tick_p50_ms']:.2f} ms"),
    (f"idle tick p99 ({TICKS})", lambda r: f"{r['tick_p99_ms']:.2f} ms"),
    ("entries due during idle ticks", lambda r: str(len(r["due_entries"]))),
    ("task_update (cron edit)", lambda r: f"{r['edit_ms']:.1f} ms"),
    (
        "tick after edit (full reload)",
        lambda r: (
            f"{r['reload_tick_ms']:.1f} ms (tick {r['ticks_until_reload']})"
            if r["reloaded"]
            else "no reload seen"
        ),
    ),
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
    parser.add_argument("--child", choices=sorted(SCHEDULERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        setup_django(os.environ["DATABASE_URL"])
        print(MARK + json.dumps(measure(args.child, args.seed)), flush=True)
        return

    db_name = f"bench_sched_{uuid.uuid4().hex[:10]}"
    database_url = f"{POSTGRES_URL}/{db_name}"
    admin_sql(f'CREATE DATABASE "{db_name}"')
    try:
        setup_django(database_url)
        from django.core.management import call_command
        from django.db import connections

        call_command("migrate", "--noinput", verbosity=0)
        rng = random.Random(args.seed)
        have = 0
        for n in sorted(args.n):
            built = build_tasks(n - have, rng)
            have = n
            print(f"N={n}: bulk_create + schedule_sync per task: {built:.1f} s", flush=True)
            connections.close_all()
            results = {kind: run_child(kind, database_url, args.seed + n) for kind in SCHEDULERS}
            for kind, result in results.items():
                if "error" in result:
                    print(f"{kind} failed: {result['error']}")
                elif result["due_entries"]:
                    print(f"{kind}: entries due during ticks: {result['due_entries'][:5]}")
            print(table(n, results), flush=True)
            print(MARK + json.dumps({"n": n, "build_s": built, **results}), flush=True)
    finally:
        from django.db import connections

        connections.close_all()
        admin_sql(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
