"""Reports: the owner's execution figures for generate-report, and storing its output.

``report_data`` reads only the owner's own rows (also for staff: a report describes its
owner's tasks) with a fixed number of aggregate queries, whatever the number of rows.
Times are UTC, days are UTC calendar days, and the period is the rolling window
``(now - period_days, now]`` on ``queued_at``.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db.models import Avg, Count, Max, Q, QuerySet, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import TruncDate
from django.utils import timezone

from ..models import ExecutionStatus, Report, ScheduledTask, TaskExecution, TaskStatus

FAILURES_SHOWN = 10
UPCOMING_SHOWN = 10
TASKS_SHOWN = 50
ERROR_CHARS = 500
TASK_FIGURES = ("actionType", "runs", "completed", "failed", "avgMs", "inputTokens", "outputTokens")
FINISHED = (ExecutionStatus.COMPLETED, ExecutionStatus.FAILED)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


def report_data(
    *,
    owner: User,
    period_days: int,
    now: datetime | None = None,
    exclude_execution_id: str | None = None,
) -> dict[str, Any]:
    """The owner's figures over the last ``period_days`` days (JSON-able, camelCase).

    ``exclude_execution_id``: the running execution making the report, not a figure yet.
    """
    now = now or timezone.now()
    since = now - timedelta(days=period_days)
    runs = TaskExecution.objects.filter(task__owner=owner, queued_at__gt=since, queued_at__lte=now)
    if exclude_execution_id is not None:
        runs = runs.exclude(pk=exclude_execution_id)
    totals = _totals(runs)
    completed, failed = totals["completed"], totals["failed"]
    return {
        "periodDays": period_days,
        "from": _iso(since),
        "to": _iso(now),
        "total": totals.pop("total"),
        "counts": {status: totals[status] for status in ExecutionStatus.values},
        "successRate": round(completed / (completed + failed), 4) if completed + failed else None,
        "durations": _durations(runs, totals),
        "perDay": _per_day(runs, since, now),
        "failures": _failures(runs),
        "upcoming": _upcoming(owner, now),
        "tasks": _tasks(owner, since, now, exclude_execution_id),
        "taskCounts": _task_counts(owner),
        "usage": {
            "inputTokens": totals["inputTokens"] or 0,
            "outputTokens": totals["outputTokens"] or 0,
            "executions": totals["aiExecutions"],
        },
    }


def _totals(runs: QuerySet[TaskExecution]) -> dict[str, Any]:
    timed = Q(status__in=FINISHED, duration_ms__isnull=False)
    return runs.aggregate(
        total=Count("pk"),
        **{status: Count("pk", filter=Q(status=status)) for status in ExecutionStatus.values},
        timed=Count("pk", filter=timed),
        avgMs=Avg("duration_ms", filter=timed),
        maxMs=Max("duration_ms", filter=timed),
        inputTokens=Sum("input_tokens"),
        outputTokens=Sum("output_tokens"),
        aiExecutions=Count("pk", filter=Q(input_tokens__gt=0) | Q(output_tokens__gt=0)),
    )


def _durations(runs: QuerySet[TaskExecution], totals: dict[str, Any]) -> dict[str, Any]:
    """Of finished executions; percentiles by nearest rank (one indexed read each)."""
    count = totals["timed"]
    ordered = runs.filter(status__in=FINISHED, duration_ms__isnull=False).order_by("duration_ms")
    values = ordered.values_list("duration_ms", flat=True)

    def rank(fraction: float) -> int | None:
        return values[max(math.ceil(fraction * count) - 1, 0)] if count else None

    average = totals["avgMs"]
    return {
        "count": count,
        "avgMs": round(average) if average is not None else None,
        "p50Ms": rank(0.5),
        "p95Ms": rank(0.95),
        "maxMs": totals["maxMs"],
    }


def _per_day(runs: QuerySet[TaskExecution], since: datetime, now: datetime) -> list[dict[str, Any]]:
    rows = (
        runs.annotate(day=TruncDate("queued_at", tzinfo=UTC))
        .values("day")
        .annotate(
            n=Count("pk"),
            completed=Count("pk", filter=Q(status=ExecutionStatus.COMPLETED)),
            failed=Count("pk", filter=Q(status=ExecutionStatus.FAILED)),
        )
        .order_by("day")
    )
    by_day: dict[date, dict[str, Any]] = {row["day"]: dict(row) for row in rows}
    first, last = since.astimezone(UTC).date(), now.astimezone(UTC).date()
    days = []
    for offset in range((last - first).days + 1):
        day = first + timedelta(days=offset)
        row = by_day.get(day, {"n": 0, "completed": 0, "failed": 0})
        days.append(
            {
                "date": day.isoformat(),
                "completed": row["completed"],
                "failed": row["failed"],
                "other": row["n"] - row["completed"] - row["failed"],
            }
        )
    return days


def _failures(runs: QuerySet[TaskExecution]) -> list[dict[str, Any]]:
    rows = (
        runs.filter(status=ExecutionStatus.FAILED)
        .order_by("-queued_at", "pk")
        .values("pk", "task_id", "task__name", "queued_at", "completed_at", "error")
    )[:FAILURES_SHOWN]
    return [
        {
            "executionId": str(row["pk"]),
            "taskId": str(row["task_id"]),
            "taskName": row["task__name"],
            "at": _iso(row["completed_at"] or row["queued_at"]),
            "error": (row["error"] or "")[:ERROR_CHARS],
        }
        for row in rows
    ]


def _upcoming(owner: User, now: datetime) -> list[dict[str, Any]]:
    rows = (
        ScheduledTask.objects.filter(
            owner=owner, status=TaskStatus.ACTIVE, next_run__isnull=False, next_run__gte=now
        )
        .order_by("next_run", "pk")
        .values("pk", "name", "type", "cron", "timezone", "next_run")
    )[:UPCOMING_SHOWN]
    return [
        {
            "taskId": str(row["pk"]),
            "taskName": row["name"],
            "type": row["type"],
            "schedule": f"{row['cron']} ({row['timezone']})" if row["cron"] else "once",
            "nextRun": _iso(row["next_run"]),
        }
        for row in rows
    ]


def _tasks(
    owner: User, since: datetime, now: datetime, exclude: str | None
) -> list[dict[str, Any]]:
    period = Q(executions__queued_at__gt=since, executions__queued_at__lte=now)
    if exclude is not None:
        period &= ~Q(executions__pk=exclude)
    rows = (
        ScheduledTask.objects.filter(owner=owner)
        .annotate(
            actionType=KT("action__type"),
            runs=Count("executions", filter=period),
            completed=Count(
                "executions", filter=period & Q(executions__status=ExecutionStatus.COMPLETED)
            ),
            failed=Count(
                "executions", filter=period & Q(executions__status=ExecutionStatus.FAILED)
            ),
            avgMs=Avg(
                "executions__duration_ms", filter=period & Q(executions__status__in=FINISHED)
            ),
            inputTokens=Sum("executions__input_tokens", filter=period),
            outputTokens=Sum("executions__output_tokens", filter=period),
        )
        .order_by("-runs", "name", "pk")
        .values("pk", "name", "type", "status", "last_run", "next_run", *TASK_FIGURES)
    )[:TASKS_SHOWN]
    return [
        {
            "taskId": str(row["pk"]),
            "name": row["name"],
            "type": row["type"],
            "status": row["status"],
            "actionType": row["actionType"] or "",
            "runs": row["runs"],
            "completed": row["completed"],
            "failed": row["failed"],
            "successRate": _rate(row["completed"], row["failed"]),
            "avgMs": round(row["avgMs"]) if row["avgMs"] is not None else None,
            "inputTokens": row["inputTokens"] or 0,
            "outputTokens": row["outputTokens"] or 0,
            "lastRun": _iso(row["last_run"]),
            "nextRun": _iso(row["next_run"]),
        }
        for row in rows
    ]


def _rate(completed: int, failed: int) -> float | None:
    return round(completed / (completed + failed), 4) if completed + failed else None


def _task_counts(owner: User) -> dict[str, int]:
    counts = ScheduledTask.objects.filter(owner=owner).aggregate(
        total=Count("pk"),
        **{status: Count("pk", filter=Q(status=status)) for status in TaskStatus.values},
    )
    return {key: int(value) for key, value in counts.items()}


def report_links(report: Report) -> dict[str, str]:
    url = f"/api/reports/{report.pk}"
    return {"reportId": str(report.pk), "url": url, "downloadUrl": f"{url}/download?format=html"}


def report_save(
    *, execution: TaskExecution, title: str, html: str, markdown: str
) -> dict[str, str]:
    """Store a rendered report for the execution's task owner; returns its links."""
    task = execution.task
    report = Report.objects.create(
        owner_id=task.owner_id,
        task=task,
        execution=execution,
        title=title[: Report._meta.get_field("title").max_length or 200],
        html=html,
        markdown=markdown,
    )
    return report_links(report)


def reports_of(owner: User) -> QuerySet[Report]:
    """The reports a user may read: their own (staff too; reports hold their owner's data)."""
    return Report.objects.filter(owner=owner)
