"""POST /api/schedules/preview: describe an unsaved schedule and list its next runs."""

from __future__ import annotations

from datetime import datetime

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from .. import cron as cronlib
from .. import selectors
from ..models import TaskType
from .common import path_errors
from .payloads import PayloadError, parse_schedule


class SchedulePreviewView(APIView):
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "preview"

    @extend_schema(
        request={
            "application/json": {
                "type": "object",
                "required": ["schedule"],
                "properties": {
                    "schedule": {
                        "type": "object",
                        "properties": {
                            "cron": {"type": "string"},
                            "timezone": {"type": "string"},
                            "at": {"type": "string", "format": "date-time"},
                        },
                    },
                    "count": {"type": "integer", "minimum": 1, "maximum": 500},
                    "from": {"type": "string", "format": "date-time"},
                },
            }
        },
        responses={
            200: {
                "type": "object",
                "properties": {
                    "description": {"type": "string"},
                    "runs": {"type": "array", "items": {"type": "string", "format": "date-time"}},
                },
            }
        },
    )
    @path_errors
    def post(self, request: Request) -> Response:
        body = request.data if isinstance(request.data, dict) else None
        if body is None:
            raise PayloadError({"(body)": ["must be a JSON object"]})
        unknown = set(body) - {"schedule", "count", "from"}
        errors: dict[str, list[str]] = {key: ["unknown field"] for key in unknown}
        schedule = body.get("schedule")
        fields = parse_schedule(schedule, None, errors)
        if not isinstance(schedule, dict) or not ({"cron", "at"} & set(schedule)):
            errors.setdefault("schedule", ["needs a cron or an at"])
        count = body.get("count", 10)
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 500:
            errors["count"] = ["must be an integer between 1 and 500"]
        start = None
        if "from" in body:
            try:
                start = datetime.fromisoformat(str(body["from"]).replace("Z", "+00:00"))
                if start.tzinfo is None:
                    raise ValueError
            except ValueError:
                errors["from"] = ["must be an ISO 8601 date and time with an offset"]
        zone = fields.get("timezone", "UTC")
        try:
            cronlib.validate_timezone(zone)
        except cronlib.CronError as exc:
            errors["schedule.timezone"] = [str(exc)]
        if errors:
            raise PayloadError(errors)
        task_type = TaskType.RECURRING if fields.get("cron") else TaskType.ONE_TIME
        try:
            preview = selectors.schedule_preview(
                task_type=task_type,
                cron=fields.get("cron", ""),
                zone=zone,
                at=fields.get("run_at"),
                count=count,
                start=start,
            )
        except cronlib.CronError as exc:
            raise PayloadError({"schedule.cron": [str(exc)]}) from None
        return Response(preview)
