"""GET /api/stats: the guide's counts, plus the last day's executions and the late tasks
(dead-man's switch), all of the caller's own tasks."""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Any

from django.db.models import Count
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import selectors
from ..models import ExecutionStatus, TaskStatus
from ..services.lateness import tasks_late
from .common import caller

DUE_SOON = timedelta(hours=1)
LATE_LISTED = 20  # ``lateTasks`` lists the oldest ones; ``late`` counts them all

_COUNT = {"type": "integer"}
STATS: dict[str, Any] = {
    "type": "object",
    "properties": {
        **{f"{status}Tasks": _COUNT for status in TaskStatus.values},
        "dueSoon": {**_COUNT, "description": "active tasks due within the hour"},
        "executionsLast24h": {
            "type": "object",
            "properties": {status: _COUNT for status in ExecutionStatus.values},
        },
        "successRateLast24h": {"type": "number", "nullable": True},
        "late": {
            **_COUNT,
            "description": "active recurring tasks whose run has not started within its grace",
        },
        "lateTasks": {
            "type": "array",
            "description": f"the {LATE_LISTED} oldest late tasks",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string", "format": "uuid"},
                    "name": {"type": "string"},
                    "occurrence": {"type": "string", "format": "date-time"},
                    "lateBySeconds": {"type": "integer"},
                },
            },
        },
    },
}


class StatsView(APIView):
    @extend_schema(responses={200: STATS})
    def get(self, request: Request) -> Response:
        user = caller(request)
        now = timezone.now()
        tasks = selectors.tasks_visible_to(user).filter(owner=user).order_by()
        # Two indexed counts rather than one pass over every row of the user's tasks:
        # COUNT(*) by status reads the (owner, status) index alone; the hour ahead is a
        # range of the (status, next_run) index.
        by_task_status = {
            row["status"]: row["n"] for row in tasks.values("status").annotate(n=Count("*"))
        }
        counts = {
            **{f"{status}Tasks": by_task_status.get(status, 0) for status in TaskStatus.values},
            "dueSoon": tasks.filter(status=TaskStatus.ACTIVE, next_run__lte=now + DUE_SOON).count(),
        }
        rows = (
            selectors.executions_visible_to(user)
            .filter(task__owner=user, queued_at__gte=now - timedelta(hours=24))
            .values("status")
            .annotate(n=Count("pk"))
            .order_by()
        )
        by_status = {row["status"]: row["n"] for row in rows}
        completed = by_status.get(ExecutionStatus.COMPLETED, 0)
        done = completed + by_status.get(ExecutionStatus.FAILED, 0)
        late = tasks_late(now=now, owner=user)
        return Response(
            {
                **counts,
                "executionsLast24h": {
                    status: by_status.get(status, 0) for status in ExecutionStatus.values
                },
                "successRateLast24h": (round(completed / done, 4) if done else None),
                "late": len(late),
                "lateTasks": [
                    {
                        "id": str(entry.task.pk),
                        "name": entry.task.name,
                        "occurrence": entry.occurrence.astimezone(UTC).isoformat(),
                        "lateBySeconds": entry.late_by_seconds,
                    }
                    for entry in late[:LATE_LISTED]
                ],
            }
        )
