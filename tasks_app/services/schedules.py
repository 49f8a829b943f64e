"""The ONLY code that writes django-celery-beat's tables.

A recurring task gets a CrontabSchedule in its timezone, a one-time task a one-off
ClockedSchedule, a trigger task no beat row. Schedule rows are shared and never
deleted here; a task's PeriodicTask goes with the task. Callers run these inside the
transaction that changes the definition.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, PeriodicTask

from .. import cron as cronlib
from ..conf import BEAT_ENTRY_PREFIX, RUN_TASK_NAME
from ..models import ScheduledTask, TaskStatus, TaskType


def beat_entry_name(task: ScheduledTask) -> str:
    return f"{BEAT_ENTRY_PREFIX}{task.id}"


def compute_next_run(task: ScheduledTask, *, now: datetime | None = None) -> datetime | None:
    if task.status != TaskStatus.ACTIVE:
        return None
    now = now or timezone.now()
    if task.type == TaskType.RECURRING:
        if task.start_at is not None and task.start_at > now:
            now = task.start_at - timedelta(microseconds=1)
        upcoming = cronlib.Cron(task.cron, task.timezone).next_after(now)
        if upcoming is None or (task.end_at is not None and upcoming > task.end_at):
            return None
        return upcoming
    if task.type == TaskType.ONE_TIME:
        return task.run_at
    return None


def crontab_for(task: ScheduledTask) -> CrontabSchedule:
    """The shared CrontabSchedule row of the task's cron in its timezone."""
    fields = cronlib.parse(task.cron, task.timezone).fields()
    found = CrontabSchedule.objects.filter(timezone=task.timezone, **fields).first()
    return found or CrontabSchedule.objects.create(timezone=task.timezone, **fields)


def _clocked_for(task: ScheduledTask) -> ClockedSchedule:
    found = ClockedSchedule.objects.filter(clocked_time=task.run_at).first()
    return found or ClockedSchedule.objects.create(clocked_time=task.run_at)


def schedule_sync(*, task: ScheduledTask) -> PeriodicTask | None:
    """Make the task's beat row and ``next_run`` match its definition and status."""
    wants_row = task.type in {TaskType.RECURRING, TaskType.ONE_TIME} and task.status in {
        TaskStatus.ACTIVE,
        TaskStatus.PAUSED,
    }
    periodic = None
    if not wants_row:
        schedule_remove(task=task)
    else:
        periodic = task.periodic_task or PeriodicTask(name=beat_entry_name(task))
        crontab = crontab_for(task) if task.type == TaskType.RECURRING else None
        clocked = _clocked_for(task) if task.type == TaskType.ONE_TIME else None
        enabled = task.status == TaskStatus.ACTIVE
        timing_changed = (
            periodic.pk is None
            or periodic.crontab_id != (crontab and crontab.pk)
            or periodic.clocked_id != (clocked and clocked.pk)
            or (enabled and not periodic.enabled)
        )
        periodic.task = RUN_TASK_NAME
        periodic.kwargs = json.dumps({"task_id": str(task.id)})
        periodic.crontab, periodic.clocked = crontab, clocked
        periodic.interval = periodic.solar = None
        periodic.one_off = clocked is not None
        periodic.enabled = enabled
        periodic.description = task.name[:200]
        # The task's window, where django-celery-beat keeps one (beat.Entry reads it).
        periodic.start_time = task.start_at if crontab else None
        periodic.expires = task.end_at if crontab else None
        periodic.expire_seconds = None
        if timing_changed:
            # Occurrences before this change (or during a pause) are not owed.
            periodic.last_run_at = timezone.now()
            periodic.total_run_count = 0
        periodic.save()
        # Beat reads rows by date_changed, set when saved, not when committed: a long
        # transaction (an import) would commit rows older than beat's look-back. Stamp
        # the row again once it is visible.
        pk = periodic.pk
        transaction.on_commit(
            lambda: PeriodicTask.objects.filter(pk=pk).update(date_changed=timezone.now())
        )
    next_run = compute_next_run(task)
    ScheduledTask.objects.filter(pk=task.pk).update(periodic_task=periodic, next_run=next_run)
    task.periodic_task, task.next_run = periodic, next_run
    return periodic


def schedule_remove(*, task: ScheduledTask) -> None:
    """Delete the task's PeriodicTask; the shared schedule rows stay."""
    if task.periodic_task_id:
        PeriodicTask.objects.filter(pk=task.periodic_task_id).delete()
        task.periodic_task = None
