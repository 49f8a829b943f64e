"""GET /api/calendar?start=&end=: planned occurrences and past runs in a window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import selectors
from ..services.calendar import calendar_entries
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
        found = calendar_entries(
            tasks=selectors.tasks_visible_to(user).filter(owner=user),  # own, even for staff
            executions=selectors.executions_visible_to(user).filter(task__owner=user),
            start=start,
            end=end,
            planned_per_task=MAX_PLANNED_PER_TASK,
        )
        return Response(
            {
                "start": start.isoformat(),
                "end": end.isoformat(),
                "occurrences": [entry.as_json() for entry in found.entries],
            }
        )
