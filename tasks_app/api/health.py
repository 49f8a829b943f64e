"""GET /api/health: can we reach the database and the broker? Also how many tasks are late
(dead-man's switch): a count only, as anyone may ask; it does not change the status."""

from __future__ import annotations

from typing import Any

from celery import current_app
from django.core.cache import cache
from django.db import connection
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ..services.lateness import tasks_late


def _probe_database() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"ok": True, "vendor": connection.vendor}
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return {"ok": False, "vendor": connection.vendor, "error": type(exc).__name__}


def _probe_broker() -> dict[str, Any]:
    try:
        with current_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            return {"ok": True, "transport": conn.transport_cls}
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return {"ok": False, "error": type(exc).__name__}


#: Health is public and polled: the late count is computed at most this often.
LATE_COUNT_SECONDS = 15


def _count_late(database_ok: bool) -> int | None:
    if not database_ok:
        return None
    try:
        return cache.get_or_set("health:late-tasks", lambda: len(tasks_late()), LATE_COUNT_SECONDS)
    except Exception:  # noqa: BLE001 - health answers whatever else fails
        return None


class HealthView(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list[Any] = []

    @extend_schema(
        responses={
            200: inline_serializer(
                "Health",
                {
                    "status": serializers.CharField(),
                    "database": serializers.DictField(),
                    "broker": serializers.DictField(),
                    "lateTasks": serializers.IntegerField(
                        allow_null=True,
                        help_text="active recurring tasks whose run has not started within "
                        "its grace (null when the database cannot say)",
                    ),
                },
            )
        }
    )
    def get(self, request: Request) -> Response:
        database, broker = _probe_database(), _probe_broker()
        healthy = database["ok"] and broker["ok"]
        return Response(
            {
                "status": "ok" if healthy else "unavailable",
                "database": database,
                "broker": broker,
                "lateTasks": _count_late(database["ok"]),
            },
            status=200 if healthy else 503,
        )
