"""Bulk data for the benchmarks: tasks with the beat rows ``schedule_sync`` would give them
(a shared CrontabSchedule per cron and timezone, a one-off ClockedSchedule per time, one
PeriodicTask per task), written in batches instead of one task at a time, and a scratch
PostgreSQL database to hold them."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

from tests.services import POSTGRES_URL

BATCH = 2000
#: the zones the benchmarks spread their schedules over
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


def status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return -1


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time these processes have used (Linux /proc); gone ones count 0."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (a Celery worker and its pool)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            return [pid, *(int(child) for child in children.read().split())]
    except OSError:
        return [pid]


def pids_named(prefix: str) -> list[int]:
    """The processes on this machine whose name starts with ``prefix`` (``postgres``)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"{entry.path}/comm") as comm:
                    name = comm.read()
            except OSError:
                continue
            if name.startswith(prefix):
                found.append(int(entry.name))
    return found


def admin_sql(sql: str) -> None:
    import psycopg

    with psycopg.connect(f"{POSTGRES_URL}/postgres", autocommit=True) as conn:
        conn.execute(sql)


@contextmanager
def scratch_database(prefix: str, *, keep: bool = False) -> Iterator[str]:
    """A fresh PostgreSQL database (its URL), migrated, dropped afterwards unless kept."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    url = f"{POSTGRES_URL}/{name}"
    admin_sql(f'CREATE DATABASE "{name}"')
    if keep:
        print(f"keeping the database: {url}", flush=True)
    try:
        setup_django(url)
        from django.core.management import call_command

        call_command("migrate", "--noinput", verbosity=0)
        yield url
    finally:
        from django.db import connections

        connections.close_all()
        if not keep:
            admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def setup_django(database_url: str, broker_url: str = "memory://") -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ["CELERY_BROKER_URL"] = broker_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scheduler_project.settings")
    import django

    django.setup()


def bench_user(username: str = "bench") -> object:
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(username=username)
    return user


def add_recurring(
    count: int,
    cron_for: Callable[[int], tuple[str, str]],
    *,
    owner: object,
    action: dict | None = None,
    now: datetime | None = None,
) -> list[uuid.UUID]:
    """``count`` active recurring tasks, ``cron_for(i)`` giving (cron, timezone) of the
    i-th, each with its beat row; returns the task ids."""
    from tasks_app import cron as cronlib
    from tasks_app.models import ScheduledTask, TaskStatus, TaskType
    from tasks_app.services.schedules import crontab_for

    now = now or datetime.now(UTC)
    action = action or {"type": "webhook", "url": "https://example.com/bench"}
    upcoming: dict[tuple[str, str], datetime | None] = {}
    tasks = []
    for i in range(count):
        cron, zone = cron_for(i)
        if (cron, zone) not in upcoming:
            upcoming[(cron, zone)] = cronlib.Cron(cron, zone).next_after(now)
        tasks.append(
            ScheduledTask(
                owner=owner,
                name=f"bench {i}",
                type=TaskType.RECURRING,
                cron=cron,
                timezone=zone,
                action=action,
                status=TaskStatus.ACTIVE,
                next_run=upcoming[(cron, zone)],
            )
        )
    ScheduledTask.objects.bulk_create(tasks, batch_size=BATCH)
    crontabs = {
        (cron, zone): crontab_for(ScheduledTask(cron=cron, timezone=zone)).pk
        for cron, zone in upcoming
    }
    _add_periodic(tasks, lambda task: {"crontab_id": crontabs[(task.cron, task.timezone)]}, now)
    return [task.pk for task in tasks]


def add_one_time(
    run_ats: Sequence[datetime], *, owner: object, action: dict | None = None
) -> list[uuid.UUID]:
    """Active one-time tasks at ``run_ats``, each with its one-off beat row."""
    from django_celery_beat.models import ClockedSchedule

    from tasks_app.models import ScheduledTask, TaskStatus, TaskType

    action = action or {"type": "webhook", "url": "https://example.com/bench"}
    tasks = [
        ScheduledTask(
            owner=owner,
            name=f"bench once {i}",
            type=TaskType.ONE_TIME,
            run_at=run_at,
            action=action,
            status=TaskStatus.ACTIVE,
            next_run=run_at,
        )
        for i, run_at in enumerate(run_ats)
    ]
    ScheduledTask.objects.bulk_create(tasks, batch_size=BATCH)
    clocked = {
        moment: ClockedSchedule.objects.create(clocked_time=moment).pk
        for moment in sorted(set(run_ats))
    }
    _add_periodic(
        tasks, lambda task: {"clocked_id": clocked[task.run_at], "one_off": True}, datetime.now(UTC)
    )
    return [task.pk for task in tasks]


def _add_periodic(tasks: list, schedule_of: Callable[[object], dict], now: datetime) -> None:
    from django.db import connection
    from django_celery_beat.models import PeriodicTask

    from tasks_app.conf import BEAT_ENTRY_PREFIX, RUN_TASK_NAME

    rows = [
        PeriodicTask(
            name=f"{BEAT_ENTRY_PREFIX}{task.pk}",
            task=RUN_TASK_NAME,
            kwargs=json.dumps({"task_id": str(task.pk)}),
            description=task.name,
            enabled=True,
            last_run_at=now,
            **schedule_of(task),
        )
        for task in tasks
    ]
    PeriodicTask.objects.bulk_create(rows, batch_size=BATCH)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE scheduled_tasks t SET periodic_task_id = p.id "
            "FROM django_celery_beat_periodictask p "
            "WHERE t.periodic_task_id IS NULL AND p.name = %s || t.id::text",
            [BEAT_ENTRY_PREFIX],
        )
