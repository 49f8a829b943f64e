"""Reads: what a user may see, and when things will run."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from cron_descriptor import get_description
from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.utils import timezone

from . import cron as cronlib
from .models import ScheduledTask, TaskExecution, TaskStatus, TaskType


def tasks_visible_to(user: User) -> QuerySet[ScheduledTask]:
    """Every task query starts here: staff see all, everyone else their own."""
    tasks = ScheduledTask.objects.select_related("owner", "mailbox")  # mailbox: emailAddress
    return tasks if user.is_staff else tasks.filter(owner=user)


def executions_visible_to(user: User) -> QuerySet[TaskExecution]:
    executions = TaskExecution.objects.all()
    return executions if user.is_staff else executions.filter(task__owner=user)


def describe_cron(expression: str, zone: str) -> str:
    return f"{get_description(expression)} ({zone})"


def schedule_preview(
    *,
    task_type: str,
    cron: str = "",
    zone: str = "UTC",
    at: datetime | None = None,
    count: int = 10,
    start: datetime | None = None,
) -> dict[str, Any]:
    """A human description and the next ``count`` fire times (ISO 8601, in ``zone``)."""
    start = start or timezone.now()
    if task_type == TaskType.RECURRING:
        parsed = cronlib.parse(cron, zone)
        runs = parsed.upcoming(start, count)
        description = describe_cron(parsed.expression, zone)
    elif task_type == TaskType.ONE_TIME and at is not None:
        runs = [at] if at > start else []
        description = f"Once, at {at.astimezone(ZoneInfo(zone)):%Y-%m-%d %H:%M} ({zone})"
    else:
        runs, description = [], "When its trigger fires"
    local = ZoneInfo(zone)
    return {"description": description, "runs": [run.astimezone(local).isoformat() for run in runs]}


def task_preview(task: ScheduledTask, *, count: int = 10) -> dict[str, Any]:
    preview = schedule_preview(
        task_type=task.type, cron=task.cron, zone=task.timezone, at=task.run_at, count=count
    )
    if task.status != TaskStatus.ACTIVE:
        return {**preview, "runs": [], "note": f"the task is {task.status}"}
    return preview


def upcoming_runs(user: User, *, limit: int = 10) -> list[ScheduledTask]:
    return list(
        tasks_visible_to(user)
        .filter(status=TaskStatus.ACTIVE, next_run__isnull=False)
        .order_by("next_run")[:limit]
    )
