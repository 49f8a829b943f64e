"""POST /api/schedules/preview: describe an unsaved schedule and list its next runs,
marking the ones a daylight-saving change moves (the answer's shape is shared with
GET /api/tasks/{id}/preview: ``PREVIEW``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from .. import cron as cronlib
from .. import selectors
from ..models import TaskType
from ..validation import MAX_JITTER
from . import openapi
from .common import path_errors
from .payloads import SCHEDULE_OPTIONS, PayloadError, parse_schedule

TIMES = {"type": "array", "items": {"type": "string", "format": "date-time"}}
TEXTS = {"type": "array", "items": {"type": "string"}}
#: The answer of both preview endpoints.
PREVIEW: dict[str, Any] = {
    "type": "object",
    "required": ["description", "runs", "occurrences", "notes", "warnings"],
    "properties": {
        "description": {"type": "string"},
        "runs": {**TIMES, "description": "the next fire times, in the schedule's timezone"},
        "occurrences": {
            "type": "array",
            "description": "the same times as runs, each with what a daylight-saving change "
            "does to it",
            "items": {
                "type": "object",
                "required": ["at"],
                "properties": {
                    "at": {"type": "string", "format": "date-time"},
                    "dst": {
                        "type": "object",
                        "description": "absent on an ordinary time",
                        "required": ["kind", "note"],
                        "properties": {
                            "kind": {
                                "type": "string",
                                "enum": [
                                    cronlib.SHIFTED,
                                    cronlib.MERGED,
                                    cronlib.REPEATED,
                                    cronlib.GAP,
                                ],
                                "description": "shifted: the clock time does not exist that "
                                "day, runs at the first instant after the gap; merged: the "
                                "clock time happens twice, runs once at the first; repeated: "
                                "runs at both (every-hour schedules); gap: the first run after "
                                "clock times that did not happen",
                            },
                            "note": {"type": "string"},
                        },
                    },
                },
            },
        },
        "notes": {**TEXTS, "description": "what else shapes the times: startAt/endAt, jitter"},
        "warnings": {
            **TEXTS,
            "description": "a saved task: its recent runs took longer than the shortest "
            "interval between its next runs, and what overlapPolicy will do",
        },
        "note": {"type": "string", "description": "a saved task that is not active"},
    },
}
EXAMPLE = {
    "description": "At 02:30 AM (America/New_York)",
    "runs": ["2026-03-07T02:30:00-05:00", "2026-03-08T03:00:00-04:00"],
    "occurrences": [
        {"at": "2026-03-07T02:30:00-05:00"},
        {
            "at": "2026-03-08T03:00:00-04:00",
            "dst": {
                "kind": "shifted",
                "note": "02:30 does not exist on 2026-03-08 in America/New_York; runs at 03:00",
            },
        },
    ],
    "notes": [],
    "warnings": [],
}


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
                        "description": "a task's schedule: cron or at, timezone, and its "
                        "options (startAt/endAt and jitterSeconds shape the answer)",
                        "properties": {
                            "cron": {"type": "string"},
                            "timezone": {"type": "string"},
                            "at": {"type": "string", "format": "date-time"},
                            "startAt": {"type": "string", "format": "date-time"},
                            "endAt": {"type": "string", "format": "date-time"},
                            "jitterSeconds": {
                                "type": "integer",
                                "minimum": 0,
                                "maximum": MAX_JITTER,
                            },
                            "misfirePolicy": {"type": "string"},
                            "catchupWindowSeconds": {"type": "integer"},
                            "overlapPolicy": {"type": "string"},
                            "graceSeconds": {"type": "integer"},
                        },
                    },
                    "count": {"type": "integer", "minimum": 1, "maximum": 500},
                    "from": {"type": "string", "format": "date-time"},
                },
            }
        },
        responses={200: PREVIEW, 400: openapi.ERRORS},
        examples=[OpenApiExample("Spring forward", value=EXAMPLE, response_only=True)],
    )
    @path_errors
    def post(self, request: Request) -> Response:
        body = request.data if isinstance(request.data, dict) else None
        if body is None:
            raise PayloadError({"(body)": ["must be a JSON object"]})
        unknown = set(body) - {"schedule", "count", "from"}
        errors: dict[str, list[str]] = {key: ["unknown field"] for key in unknown}
        schedule = body.get("schedule")
        fields = _parse(schedule, errors)
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
                start_at=fields.get("start_at"),
                end_at=fields.get("end_at"),
                jitter_seconds=fields.get("jitter_seconds", 0),
            )
        except cronlib.CronError as exc:
            raise PayloadError({"schedule.cron": [str(exc)]}) from None
        return Response(preview)


def _parse(schedule: Any, errors: dict[str, list[str]]) -> dict[str, Any]:
    """``parse_schedule``, and the checks of the options a preview uses (the window and
    the jitter; the others are read and ignored)."""
    fields = parse_schedule(schedule, None, errors)
    jitter = fields.get("jitter_seconds", 0)
    if isinstance(jitter, int) and not 0 <= jitter <= MAX_JITTER:
        errors["schedule.jitterSeconds"] = [f"must be from 0 to {MAX_JITTER} seconds"]
    start_at, end_at = fields.get("start_at"), fields.get("end_at")
    if start_at and end_at and end_at <= start_at:
        errors["schedule.endAt"] = ["must be after schedule.startAt"]
    for key in ("startAt", "endAt"):
        if fields.get(SCHEDULE_OPTIONS[key]) and not fields.get("cron"):
            errors[f"schedule.{key}"] = ["only a recurring schedule (cron) has a window"]
    return fields
