"""Writes to task definitions. Each runs in one transaction with its schedule sync
(ScheduledTask.save is atomic and the sync receiver runs inside it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from ..models import EDITABLE_FIELDS, ScheduledTask, TaskStatus, TaskType
from ..validation import validate_task
from .occurrences import occurrences_skip_paused


def _check_run_at(task: ScheduledTask, *, now: datetime) -> None:
    if task.type == TaskType.ONE_TIME and task.run_at is not None and task.run_at <= now:
        raise ValidationError({"schedule.at": ["must be in the future"]})


def _check_end_at(task: ScheduledTask, *, now: datetime) -> None:
    if task.end_at is not None and task.end_at <= now:
        raise ValidationError({"schedule.endAt": ["must be in the future"]})


def task_create(
    *, owner: User, name: str, type: str, action: dict[str, Any], **fields: Any
) -> ScheduledTask:
    unknown = set(fields) - set(EDITABLE_FIELDS)
    if unknown:
        raise TypeError(f"unknown task fields: {', '.join(sorted(unknown))}")
    task = ScheduledTask(owner=owner, name=name, type=type, action=action, **fields)
    validate_task(task)
    _check_run_at(task, now=timezone.now())
    _check_end_at(task, now=timezone.now())
    with transaction.atomic():
        task.save()
    return task


def task_update(*, task: ScheduledTask, **changes: Any) -> ScheduledTask:
    unknown = set(changes) - set(EDITABLE_FIELDS)
    if unknown:
        raise TypeError(f"unknown task fields: {', '.join(sorted(unknown))}")
    for field, value in changes.items():
        setattr(task, field, value)
    validate_task(task)
    if "run_at" in changes or "type" in changes:
        _check_run_at(task, now=timezone.now())
    if "end_at" in changes:
        _check_end_at(task, now=timezone.now())
    if (
        task.type == TaskType.ONE_TIME
        and task.status in {TaskStatus.COMPLETED, TaskStatus.FAILED}
        and "run_at" in changes
    ):
        task.status = TaskStatus.ACTIVE  # rescheduling a finished one-time task re-arms it
    with transaction.atomic():
        task.save()
    return task


def task_pause(*, task: ScheduledTask, reason: str = "") -> ScheduledTask:
    """Pause an active task, remembering why (a paused one keeps its first reason unless
    a new one is given)."""
    if task.status == TaskStatus.ACTIVE:
        task.status = TaskStatus.PAUSED
        task.pause_reason = reason
        task.paused_at = timezone.now()
        task.save(update_fields=["status", "pause_reason", "paused_at", "updated_at"])
    elif task.status == TaskStatus.PAUSED and reason:
        task.pause_reason = reason
        task.save(update_fields=["pause_reason", "updated_at"])
    return task


def task_resume(*, task: ScheduledTask) -> ScheduledTask:
    if task.status == TaskStatus.PAUSED:
        with transaction.atomic():
            # The history shows the occurrences the pause skipped.
            occurrences_skip_paused(task=task, until=timezone.now())
            task.status = TaskStatus.ACTIVE
            task.pause_reason = ""
            task.paused_at = None
            task.save(update_fields=["status", "pause_reason", "paused_at", "updated_at"])
    return task


def task_delete(*, task: ScheduledTask) -> None:
    with transaction.atomic():
        task.delete()
