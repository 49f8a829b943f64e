"""Dead-man's switch: an active recurring task whose occurrence has not started within its
grace period is late.

Grace: ``graceSeconds`` (or ``SCHEDULER_LATE_AFTER_SECONDS``) plus ``jitterSeconds``. A
task is late at ``now`` when

* its most recent occurrence due by ``now - grace`` (inside its window, and not before the
  task was last created, edited or resumed: ``updated_at``) has no scheduled execution, or
  one that is still queued (not started, not held behind a previous run): beat or the
  workers are down; or
* an older scheduled execution is still queued, not held and not started ``grace`` after
  its time (or after the task was last armed): the workers are down, and the occurrences
  after it are being skipped by the overlap policy ("the previous run is still queued").

It is computed live (``tasks_late``) for stats, health and the admin, since a dead beat
also stops the periodic check; ``tasks_check_late`` (run by beat) records the episode in
``late_since`` and notifies the owner once per episode.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import Min, QuerySet
from django.utils import timezone

from .. import cron as cronlib
from ..models import (
    ExecutionStatus,
    ExecutionTrigger,
    ScheduledTask,
    TaskExecution,
    TaskStatus,
    TaskType,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LateTask:
    """A late task, its late occurrence (UTC) and how long ago that occurrence was due."""

    task: ScheduledTask
    occurrence: datetime
    late_by_seconds: int


def grace_for(task: ScheduledTask) -> timedelta:
    """How long after its time an occurrence may still not have started."""
    grace = task.grace_seconds
    if grace is None:
        grace = settings.SCHEDULER_LATE_AFTER_SECONDS
    return timedelta(seconds=grace + (task.jitter_seconds or 0))


def tasks_late(*, now: datetime | None = None, owner: User | None = None) -> list[LateTask]:
    """The late tasks (of ``owner``, or everyone's), oldest occurrence first.

    Indexed prefilters find the candidates (tasks whose ``next_run`` was not advanced:
    beat is down; tasks with a scheduled run still queued: workers are down); each
    candidate is then confirmed with its own grace."""
    now = now or timezone.now()
    armed = ScheduledTask.objects.filter(status=TaskStatus.ACTIVE, type=TaskType.RECURRING)
    if owner is not None:
        armed = armed.filter(owner=owner)
    cutoff = now - _smallest_grace(armed)
    stale = set(armed.filter(next_run__lt=cutoff).values_list("pk", flat=True))
    stuck = dict(
        _not_started()
        .filter(task__in=armed, scheduled_for__lt=cutoff)
        .values("task_id")
        .annotate(first=Min("scheduled_for"))
        .order_by()
        .values_list("task_id", "first")
    )
    candidates = list(armed.select_related("owner").filter(pk__in=stale | set(stuck)))
    found: list[LateTask] = []
    pending: dict[uuid.UUID, tuple[ScheduledTask, datetime]] = {}
    for task in candidates:
        grace = grace_for(task)
        first_stuck = stuck.get(task.pk)
        if first_stuck is not None and max(first_stuck, task.updated_at) + grace < now:
            found.append(_late(task, first_stuck, now))
            continue
        occurrence = due_occurrence(task, now - grace)
        if occurrence is not None:
            pending[task.pk] = (task, occurrence)
    found += [_late(task, moment, now) for task, moment in _unaccounted(pending)]
    return sorted(found, key=lambda late: (late.occurrence, str(late.task.pk)))


def due_occurrence(task: ScheduledTask, moment: datetime) -> datetime | None:
    """The task's latest occurrence at or before ``moment``, inside its window and not
    before it was armed (created, edited or resumed)."""
    limit = min(moment, task.end_at) if task.end_at else moment
    try:
        occurrence = cronlib.Cron(task.cron, task.timezone).latest_at_or_before(limit)
    except (cronlib.CronError, ValueError, KeyError):  # an unusable definition: not ours
        return None
    if occurrence is None or occurrence < task.updated_at:
        return None
    if task.start_at is not None and occurrence < task.start_at:
        return None
    return occurrence


def tasks_check_late(*, now: datetime | None = None) -> int:
    """Record lateness in ``late_since`` and notify the owners of newly late tasks (once
    per episode); clear it on tasks no longer late. The number of tasks notified.

    Both transitions are conditional updates on the value read, so two checks running at
    once notify once."""
    from .notifications import task_late_notify

    now = now or timezone.now()
    late = {entry.task.pk: entry for entry in tasks_late(now=now)}
    flagged = dict(
        ScheduledTask.objects.filter(late_since__isnull=False).values_list("pk", "late_since")
    )
    for pk, since in flagged.items():
        if pk not in late:
            ScheduledTask.objects.filter(pk=pk, late_since=since).update(late_since=None)
    notified = 0
    for pk, entry in late.items():
        if pk in flagged:
            continue
        claimed = ScheduledTask.objects.filter(pk=pk, late_since__isnull=True).update(
            late_since=entry.occurrence
        )
        if not claimed:
            continue
        logger.warning(
            "task %s is late: its run of %s has not started", pk, entry.occurrence.isoformat()
        )
        try:
            task_late_notify(late=entry)
        except Exception:  # noqa: BLE001 - a notice must never stop the check
            logger.warning("task %s: late notice failed", pk, exc_info=True)
        notified += 1
    return notified


def _smallest_grace(armed: QuerySet[ScheduledTask]) -> timedelta:
    """The smallest grace among the candidates (jitter only adds): the prefilters' bound."""
    default = settings.SCHEDULER_LATE_AFTER_SECONDS
    smaller = armed.filter(grace_seconds__lt=default).aggregate(m=Min("grace_seconds"))["m"]
    return timedelta(seconds=default if smaller is None else smaller)


def _not_started() -> QuerySet[TaskExecution]:
    """Scheduled runs sent to the workers and not started (held runs are waiting on
    purpose)."""
    return TaskExecution.objects.filter(
        trigger=ExecutionTrigger.SCHEDULED,
        status=ExecutionStatus.QUEUED,
        held=False,
        started_at__isnull=True,
    )


def _unaccounted(
    pending: dict[uuid.UUID, tuple[ScheduledTask, datetime]],
) -> list[tuple[ScheduledTask, datetime]]:
    """Of the (task, occurrence) pairs, those with no execution or one not started."""
    if not pending:
        return []
    rows = TaskExecution.objects.filter(
        trigger=ExecutionTrigger.SCHEDULED,
        task_id__in=list(pending),
        scheduled_for__in={moment for _, moment in pending.values()},
    ).values_list("task_id", "scheduled_for", "status", "held", "started_at")
    accounted = {
        (task_id, moment)
        for task_id, moment, status, held, started_at in rows
        if status != ExecutionStatus.QUEUED or held or started_at is not None
    }
    return [
        (task, moment) for pk, (task, moment) in pending.items() if (pk, moment) not in accounted
    ]


def _late(task: ScheduledTask, occurrence: datetime, now: datetime) -> LateTask:
    return LateTask(task, occurrence, max(int((now - occurrence).total_seconds()), 0))
