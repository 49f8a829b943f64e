"""The calendar: planned occurrences and past runs in a time window, computed once for
GET /api/calendar, the /calendar/ page and the iCal feed; and the feed's secret token.

Planned occurrences are what ``selectors.task_preview`` lists: active tasks only, fires
strictly after now, inside the task's startAt/endAt window, each with its daylight-saving
``Mark``. Past runs are executions placed at their occurrence (``scheduled_for``), else
when they started or were queued.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.db.models.functions import Coalesce
from django.utils import timezone

from .. import cron as cronlib
from ..models import CalendarFeed, ScheduledTask, TaskExecution, TaskStatus, TaskType
from .occurrences import in_window

PLANNED = "planned"
_MICRO = timedelta(microseconds=1)
_DAY = timedelta(days=1)


@dataclass(frozen=True)
class Entry:
    """One occurrence: planned (``execution_id`` None) or a past run with its status."""

    task_id: str
    name: str
    at: datetime  # UTC
    status: str  # PLANNED or an ExecutionStatus
    execution_id: str | None = None
    dst: cronlib.Mark | None = None
    owner: str = ""

    def as_json(self) -> dict[str, Any]:
        """The GET /api/calendar shape."""
        return {
            "taskId": self.task_id,
            "name": self.name,
            "at": self.at.isoformat(),
            "status": self.status,
            "executionId": self.execution_id,
        }


@dataclass
class Calendar:
    entries: list[Entry] = field(default_factory=list)
    capped: set[tuple[str, date | None]] = field(default_factory=set)  # (task id, day) cut
    tasks_capped: bool = False  # more active tasks than were planned
    runs_capped: bool = False  # more past runs than were listed


def planned_occurrences(
    task: ScheduledTask,
    *,
    start: datetime,
    end: datetime | None,
    limit: int,
    now: datetime | None = None,
) -> list[tuple[datetime, cronlib.Mark | None]]:
    """Up to ``limit`` fires (UTC, with DST marks) of ``task`` in [start, end), after now,
    inside its startAt/endAt window; none for a task that is not active."""
    if task.status != TaskStatus.ACTIVE or limit <= 0:
        return []
    after = max(start - _MICRO, now or timezone.now())
    if task.type == TaskType.ONE_TIME:
        at = task.run_at
        if at is None or at <= after or (end is not None and at >= end):
            return []
        return [(at.astimezone(UTC), None)] if in_window(task, at) else []
    if task.type != TaskType.RECURRING:
        return []
    if task.start_at is not None:
        after = max(after, task.start_at - _MICRO)
    if task.end_at is not None:
        end = min(end, task.end_at + _MICRO) if end is not None else task.end_at + _MICRO
    try:
        parsed = cronlib.parse(task.cron, task.timezone)
    except cronlib.CronError:
        return []
    return parsed.upcoming_marked(after, limit, before=end)


def local_days(first: date, last: date, zone: ZoneInfo) -> list[tuple[date, datetime, datetime]]:
    """Each day from ``first`` to ``last`` with its start and end instants (UTC) in ``zone``."""
    days, day = [], first
    while day <= last:
        days.append((day, local_midnight(day, zone), local_midnight(day + _DAY, zone)))
        day += _DAY
    return days


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


def calendar_entries(
    *,
    tasks: QuerySet[ScheduledTask],
    executions: QuerySet[TaskExecution],
    start: datetime,
    end: datetime,
    planned_per_task: int,
    planned_per_day: int | None = None,
    zone: ZoneInfo | None = None,
    max_tasks: int | None = None,
    max_runs: int | None = None,
    max_planned: int | None = None,
    now: datetime | None = None,
) -> Calendar:
    """Planned occurrences of ``tasks`` and past ``executions`` in [start, end), by time.

    With ``planned_per_day`` the window is walked day by day in ``zone`` (UTC by default)
    and each task plans at most that many a day; ``capped`` names what was cut. Tasks are
    planned by name until ``max_tasks`` of them or ``max_planned`` occurrences in all."""
    now = now or timezone.now()
    result = Calendar()
    active = tasks.filter(
        status=TaskStatus.ACTIVE, type__in=(TaskType.RECURRING, TaskType.ONE_TIME)
    ).order_by("name", "pk")
    if max_tasks is not None:
        picked = list(active[: max_tasks + 1])
        result.tasks_capped = len(picked) > max_tasks
        active_tasks: Iterable[ScheduledTask] = picked[:max_tasks]
    else:
        active_tasks = active
    spans: list[tuple[date | None, datetime, datetime, int]] = [
        (None, start, end, planned_per_task)
    ]
    if planned_per_day is not None:
        first = start.astimezone(zone or UTC).date()
        last = (end - _MICRO).astimezone(zone or UTC).date()
        spans = [
            (day, max(begin, start), min(finish, end), planned_per_day)
            for day, begin, finish in local_days(first, last, zone or ZoneInfo("UTC"))
        ]
    planned = 0
    for task in active_tasks:
        if max_planned is not None and planned >= max_planned:
            result.tasks_capped = True
            break
        total = 0
        for day, begin, finish, cap in spans:
            cap = min(cap, planned_per_task - total)
            fires = planned_occurrences(task, start=begin, end=finish, limit=cap + 1, now=now)
            if len(fires) > cap:
                result.capped.add((str(task.pk), day))
                fires = fires[:cap]
            total += len(fires)
            planned += len(fires)
            result.entries += [_planned(task, at, mark) for at, mark in fires]
    result.entries += _runs(executions, start, end, max_runs, result)
    result.entries.sort(key=lambda entry: entry.at)
    return result


def _planned(task: ScheduledTask, at: datetime, mark: cronlib.Mark | None) -> Entry:
    owner = task.owner.get_username()
    return Entry(str(task.pk), task.name, at, PLANNED, dst=mark, owner=owner)


def _runs(
    executions: QuerySet[TaskExecution],
    start: datetime,
    end: datetime,
    limit: int | None,
    result: Calendar,
) -> list[Entry]:
    rows = list(
        executions.annotate(at=Coalesce("scheduled_for", "started_at", "queued_at"))
        .filter(at__gte=start, at__lt=end)
        .order_by("at", "pk")
        .values_list("pk", "task_id", "task__name", "status", "at", "task__owner__username")[
            : (limit + 1 if limit is not None else None)
        ]
    )
    if limit is not None and len(rows) > limit:
        result.runs_capped, rows = True, rows[:limit]
    return [
        Entry(str(task_id), name, at.astimezone(UTC), status, str(pk), owner=owner)
        for pk, task_id, name, status, at, owner in rows
    ]


# --- the iCal feed's secret --------------------------------------------------------------


def feed_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def calendar_feed_issue(*, owner: User) -> str:
    """A new secret feed token for ``owner`` (shown once; only its hash is kept), which
    replaces any earlier one."""
    token = secrets.token_urlsafe(32)
    CalendarFeed.objects.update_or_create(
        owner=owner,
        defaults={
            "token_hash": feed_token_hash(token),
            "created_at": timezone.now(),
            "last_used_at": None,
        },
    )
    return token


def calendar_feed_revoke(*, owner: User) -> bool:
    deleted, _ = CalendarFeed.objects.filter(owner=owner).delete()
    return bool(deleted)


def calendar_feed_owner(token: str) -> User | None:
    """The user whose feed ``token`` is, noting the use; None for an unknown token."""
    feed = (
        CalendarFeed.objects.select_related("owner")
        .filter(token_hash=feed_token_hash(token), owner__is_active=True)
        .first()
    )
    if feed is None:
        return None
    CalendarFeed.objects.filter(pk=feed.pk).update(last_used_at=timezone.now())
    return feed.owner
