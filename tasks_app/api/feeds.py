"""/api/calendar/feed: my secret iCal feed URL. POST makes it (or regenerates it, which
invalidates the old URL) and is the only answer that shows it; GET says whether one
exists; DELETE revokes it."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle, ScopedRateThrottle
from rest_framework.views import APIView

from ..models import CalendarFeed
from ..services.calendar import calendar_feed_issue, calendar_feed_revoke
from ..web.feed import public_base_url
from .common import caller

MOMENT = {"type": "string", "format": "date-time", "nullable": True}
STATE = {
    "type": "object",
    "required": ["exists", "createdAt", "lastUsedAt"],
    "properties": {"exists": {"type": "boolean"}, "createdAt": MOMENT, "lastUsedAt": MOMENT},
}
ISSUED = {
    "type": "object",
    "required": ["url", "createdAt"],
    "properties": {
        "url": {"type": "string", "format": "uri", "description": "shown only this once"},
        "createdAt": {"type": "string", "format": "date-time"},
    },
}


class CalendarFeedView(APIView):
    throttle_scope = "task-write"

    def get_throttles(self) -> list[BaseThrottle]:
        return [ScopedRateThrottle()] if self.request.method == "POST" else []

    @extend_schema(responses={200: STATE})
    def get(self, request: Request) -> Response:
        feed = CalendarFeed.objects.filter(owner=caller(request)).first()
        return Response(
            {
                "exists": feed is not None,
                "createdAt": feed.created_at.isoformat() if feed else None,
                "lastUsedAt": feed.last_used_at.isoformat() if feed and feed.last_used_at else None,
            }
        )

    @extend_schema(request=None, responses={201: ISSUED})
    def post(self, request: Request) -> Response:
        user = caller(request)
        token = calendar_feed_issue(owner=user)
        path = reverse("calendar-feed", kwargs={"token": token})
        created = CalendarFeed.objects.get(owner=user).created_at
        return Response(
            {"url": f"{public_base_url(request)}{path}", "createdAt": created.isoformat()},
            status=201,
            headers={"Cache-Control": "no-store"},
        )

    @extend_schema(responses={204: None})
    def delete(self, request: Request) -> Response:
        calendar_feed_revoke(owner=caller(request))
        return Response(status=204)
