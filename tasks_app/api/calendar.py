"""GET /api/calendar?start=&end=: planned occurrences and past runs in a window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models.functions import Coalesce
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import cron as cronlib
from .. import selectors
from ..models import TaskStatus, TaskType
from .common import caller, path_errors
from .payloads import PayloadError

MAX_WINDOW = timedelta(days=92)
MAX_PLANNED_PER_TASK = 2000


def _moment(request: Request, name: str, default: datetime) -> datetime:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = datetime.fromisoformat(raw.replace(" ", "+").replace("Z", "+00:00"))
    except ValueError:
        raise PayloadError({name: ["must be an ISO 8601 date or date and time"]}) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class CalendarView(APIView):
    @extend_schema(responses={200: {"type": "object"}})
    @path_errors
    def get(self, request: Request) -> Response:
        user = caller(request)
        today = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
        start = _moment(request, "start", today.replace(day=1))
        end = _moment(request, "end", start + timedelta(days=31))
        if not start < end <= start + MAX_WINDOW:
            raise PayloadError({"end": ["must be after start, within 92 days"]})
        tasks = selectors.tasks_visible_to(user).filter(owner=user)
        entries: list[dict[str, Any]] = []
        planned_from = max(start, timezone.now())
        for task in tasks.filter(status=TaskStatus.ACTIVE):
            for at in _planned(task.type, task.cron, task.timezone, task.run_at, planned_from, end):
                entries.append(
                    {
                        "taskId": str(task.pk),
                        "name": task.name,
                        "at": at.isoformat(),
                        "status": "planned",
                        "executionId": None,
                    }
                )
        runs = (
            selectors.executions_visible_to(user)
            .filter(task__owner=user)
            .annotate(at=Coalesce("scheduled_for", "started_at", "queued_at"))
            .filter(at__gte=start, at__lt=end)
            .select_related("task")
            .defer("logs", "result")
        )
        for run in runs:
            entries.append(
                {
                    "taskId": str(run.task_id),
                    "name": run.task.name,
                    "at": run.at.astimezone(UTC).isoformat(),
                    "status": run.status,
                    "executionId": str(run.pk),
                }
            )
        entries.sort(key=lambda entry: entry["at"])
        return Response(
            {"start": start.isoformat(), "end": end.isoformat(), "occurrences": entries}
        )


def _planned(
    task_type: str, cron: str, zone: str, run_at: datetime | None, start: datetime, end: datetime
) -> list[datetime]:
    if task_type == TaskType.ONE_TIME:
        return [run_at.astimezone(UTC)] if run_at and start <= run_at < end else []
    if task_type != TaskType.RECURRING:
        return []
    return cronlib.Cron(cron, zone).upcoming(
        start - timedelta(microseconds=1), MAX_PLANNED_PER_TASK, before=end
    )
