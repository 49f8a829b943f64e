"""GET /api/stats: the guide's counts, plus the last day's executions."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Count, Q
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import selectors
from ..models import ExecutionStatus, TaskStatus
from .common import caller

DUE_SOON = timedelta(hours=1)


class StatsView(APIView):
    @extend_schema(responses={200: {"type": "object"}})
    def get(self, request: Request) -> Response:
        user = caller(request)
        now = timezone.now()
        tasks = selectors.tasks_visible_to(user).filter(owner=user)
        counts = tasks.aggregate(
            **{
                f"{status}Tasks": Count("pk", filter=Q(status=status))
                for status in TaskStatus.values
            },
            dueSoon=Count("pk", filter=Q(status=TaskStatus.ACTIVE, next_run__lte=now + DUE_SOON)),
        )
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
        return Response(
            {
                **counts,
                "executionsLast24h": {
                    status: by_status.get(status, 0) for status in ExecutionStatus.values
                },
                "successRateLast24h": (round(completed / done, 4) if done else None),
            }
        )
