"""Reads: what a user may see, and when things will run."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from cron_descriptor import get_description
from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.utils import timezone

from . import cron as cronlib
from .models import (
    ExecutionStatus,
    OverlapPolicy,
    ScheduledTask,
    TaskExecution,
    TaskStatus,
    TaskType,
)


def tasks_visible_to(user: User) -> QuerySet[ScheduledTask]:
    """Every task query starts here: staff see all, everyone else their own."""
    tasks = ScheduledTask.objects.select_related("owner", "mailbox")  # mailbox: emailAddress
    return tasks if user.is_staff else tasks.filter(owner=user)


def executions_visible_to(user: User) -> QuerySet[TaskExecution]:
    executions = TaskExecution.objects.all()
    return executions if user.is_staff else executions.filter(task__owner=user)


def describe_cron(expression: str, zone: str) -> str:
    return f"{get_description(expression)} ({zone})"


RECENT_RUNS = 20  # executions looked at for the overlap warning
GAP_SAMPLE = 20  # upcoming occurrences looked at for the shortest interval
_MICRO = timedelta(microseconds=1)
OVERLAP_OUTCOMES: dict[str, str] = {
    OverlapPolicy.SKIP: "some runs will be skipped (overlapPolicy skip: an occurrence that "
    "comes while a run is still going does not run)",
    OverlapPolicy.QUEUE: "runs will queue one behind another and start late (overlapPolicy "
    "queue: at most one waits; further ones are skipped)",
    OverlapPolicy.ALLOW: "runs will overlap (overlapPolicy allow: a new run starts while the "
    "previous one is still going)",
}


def schedule_preview(
    *,
    task_type: str,
    cron: str = "",
    zone: str = "UTC",
    at: datetime | None = None,
    count: int = 10,
    start: datetime | None = None,
    start_at: datetime | None = None,
    end_at: datetime | None = None,
    jitter_seconds: int = 0,
) -> dict[str, Any]:
    """A human description and the next ``count`` fire times (ISO 8601, in ``zone``).

    ``runs`` lists the times; ``occurrences`` the same times, each with a ``dst`` mark when
    a daylight-saving change moved, merged or repeated it (``cronlib.Mark``); ``notes``
    says what else shapes them (the startAt/endAt window, jitter) and ``warnings`` is left
    for the caller (``task_preview`` fills it)."""
    start = start or timezone.now()
    local = ZoneInfo(zone)
    notes: list[str] = []
    fires: list[tuple[datetime, cronlib.Mark | None]]
    if task_type == TaskType.RECURRING:
        parsed = cronlib.parse(cron, zone)
        after, before = _window(start, start_at, end_at)
        fires = parsed.upcoming_marked(after, count, before=before)
        description = describe_cron(parsed.expression, zone)
        notes += _window_notes(start, start_at, end_at, local)
    elif task_type == TaskType.ONE_TIME and at is not None:
        fires = [(at, None)] if at > start else []
        description = f"Once, at {at.astimezone(local):%Y-%m-%d %H:%M} ({zone})"
    else:
        fires, description = [], "When its trigger fires"
    if jitter_seconds and task_type != TaskType.TRIGGER:
        notes.append(
            f"each run starts up to {jitter_seconds} s after its time (jitterSeconds); "
            "the times listed are the nominal ones"
        )
    occurrences: list[dict[str, Any]] = []
    for fire, mark in fires:
        occurrence: dict[str, Any] = {"at": fire.astimezone(local).isoformat()}
        if mark is not None:
            occurrence["dst"] = {"kind": mark.kind, "note": mark.note}
        occurrences.append(occurrence)
    return {
        "description": description,
        "runs": [entry["at"] for entry in occurrences],
        "occurrences": occurrences,
        "notes": notes,
        "warnings": [],
    }


def _window(
    start: datetime, start_at: datetime | None, end_at: datetime | None
) -> tuple[datetime, datetime | None]:
    """``upcoming``'s after/before for runs from ``start`` inside [start_at, end_at]."""
    after = max(start, start_at - _MICRO) if start_at is not None else start
    return after, (end_at + _MICRO if end_at is not None else None)


def _window_notes(
    start: datetime, start_at: datetime | None, end_at: datetime | None, local: ZoneInfo
) -> list[str]:
    notes = []
    if start_at is not None and start_at > start:
        notes.append(f"no runs before {start_at.astimezone(local).isoformat()} (startAt)")
    if end_at is not None:
        notes.append(f"no runs after {end_at.astimezone(local).isoformat()} (endAt)")
    return notes


def task_preview(task: ScheduledTask, *, count: int = 10) -> dict[str, Any]:
    """``schedule_preview`` of a saved task, with its window and jitter, and a warning when
    its recent runs took longer than the shortest interval between its next ones."""
    preview = schedule_preview(
        task_type=task.type,
        cron=task.cron,
        zone=task.timezone,
        at=task.run_at,
        count=count,
        start_at=task.start_at,
        end_at=task.end_at,
        jitter_seconds=task.jitter_seconds,
    )
    if task.status != TaskStatus.ACTIVE:
        return {**preview, "runs": [], "occurrences": [], "note": f"the task is {task.status}"}
    return {**preview, "warnings": overlap_warnings(task)}


def overlap_warnings(task: ScheduledTask, *, now: datetime | None = None) -> list[str]:
    """Say so when recent runs took longer than the shortest interval between upcoming
    occurrences (less the jitter, which can bring two runs that much closer), and what the
    task's overlapPolicy will do about it."""
    if task.type != TaskType.RECURRING:
        return []
    after, before = _window(now or timezone.now(), task.start_at, task.end_at)
    fires = cronlib.Cron(task.cron, task.timezone).upcoming(after, GAP_SAMPLE, before=before)
    if len(fires) < 2:
        return []
    shortest, at = min((b - a, a) for a, b in itertools.pairwise(fires))
    room = shortest - timedelta(seconds=task.jitter_seconds)
    durations = list(
        task.executions.filter(
            status__in=(ExecutionStatus.COMPLETED, ExecutionStatus.FAILED),
            duration_ms__isnull=False,
        )
        .order_by("-queued_at")
        .values_list("duration_ms", flat=True)[:RECENT_RUNS]
    )
    longer = [ms for ms in durations if ms is not None and timedelta(milliseconds=ms) > room]
    if not longer:
        return []
    jitter = f", less {task.jitter_seconds} s of jitter" if task.jitter_seconds else ""
    local = at.astimezone(ZoneInfo(task.timezone))
    policy = OVERLAP_OUTCOMES.get(task.overlap_policy, OVERLAP_OUTCOMES[OverlapPolicy.SKIP])
    return [
        f"{len(longer)} of the last {len(durations)} runs took longer "
        f"(up to {_duration(timedelta(milliseconds=max(longer)))}) than the shortest interval "
        f"between upcoming runs ({_duration(shortest)} after {local.isoformat()}{jitter}): "
        f"{policy}"
    ]


def _duration(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{hours} h" if hours else "", f"{minutes} min" if minutes else ""]
    parts.append(f"{seconds} s" if seconds or not (hours or minutes) else "")
    return " ".join(part for part in parts if part)


def upcoming_runs(user: User, *, limit: int = 10) -> list[ScheduledTask]:
    return list(
        tasks_visible_to(user)
        .filter(status=TaskStatus.ACTIVE, next_run__isnull=False)
        .order_by("next_run")[:limit]
    )
