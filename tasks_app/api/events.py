"""POST /api/events: run every active task of the caller triggered by that event."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from ..services import triggers
from ..storable import unstorable
from .common import caller, path_errors
from .payloads import PayloadError

EVENT_BODY = {
    "type": "object",
    "required": ["event"],
    "properties": {"event": {"type": "string"}, "payload": {}},
    "additionalProperties": False,
}


def parse_event(body: Any) -> tuple[str, Any]:
    if not isinstance(body, dict):
        raise PayloadError({"(body)": ["must be a JSON object"]})
    errors: dict[str, list[str]] = {
        str(key): ["unknown field"] for key in set(body) - {"event", "payload"}
    }
    name = body.get("event")
    if not isinstance(name, str) or not triggers.EVENT_NAME.match(name):
        errors["event"] = ["must be a name of 1 to 100 letters, digits and . _ : -"]
    elif name in triggers.SYSTEM_EVENTS:
        errors["event"] = [f"{name!r} is emitted by the system itself"]
    payload = body.get("payload")
    bad = unstorable(payload, "payload")
    if bad:
        errors[bad[0]] = [bad[1]]
    if errors:
        raise PayloadError(errors)
    return str(name), payload


class EventView(APIView):
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "event"

    @extend_schema(
        operation_id="events_emit",
        request={"application/json": EVENT_BODY},
        responses={
            202: {
                "type": "object",
                "properties": {"executionIds": {"type": "array", "items": {"type": "string"}}},
            }
        },
    )
    @path_errors
    def post(self, request: Request) -> Response:
        name, payload = parse_event(request.data)
        headers = {key.lower(): value for key, value in request.headers.items()}
        started = triggers.event_emit(
            owner_id=caller(request).pk,
            name=name,
            payload=payload,
            depth=triggers.depth_from(headers),
        )
        return Response({"executionIds": [str(e.pk) for e in started]}, status=202)
