"""Inbound webhooks (``POST /api/webhooks/{webhookId}``) and their management under a task:
list, rotate (two valid secrets for a grace period), require signatures, revoke."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import QueryDict
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import SimpleRateThrottle
from rest_framework.views import APIView

from .. import selectors
from ..models import TaskStatus, TaskWebhook
from ..services import triggers
from ..storable import unstorable
from .common import caller, path_errors
from .payloads import PayloadError

RECEIVED = {"type": "object", "properties": {"executionId": {"type": "string", "nullable": True}}}
HOOK: dict[str, Any] = {
    "type": "object",
    "properties": {
        "webhookId": {"type": "string"},
        "webhookUrl": {"type": "string"},
        "requireSignature": {"type": "boolean"},
        "active": {"type": "boolean"},
        "createdAt": {"type": "string", "format": "date-time"},
        "lastUsedAt": {"type": "string", "format": "date-time", "nullable": True},
        "previousSecretExpiresAt": {"type": "string", "format": "date-time", "nullable": True},
    },
}


class PerWebhookThrottle(SimpleRateThrottle):
    """Inbound requests per webhook (whoever sends them)."""

    scope = "webhook"

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        return self.cache_format % {"scope": self.scope, "ident": view.kwargs.get("webhook_id")}


def parse_payload(request: Request, body: bytes) -> Any:
    """JSON, form or text; the action sees it as ``{webhook_payload}``."""
    if not body:
        return None
    content_type = (request.content_type or "").split(";")[0].strip().lower()
    if content_type == "application/json" or content_type.endswith("+json"):
        try:
            payload = json.loads(body)
        except ValueError:
            raise PayloadError({"(body)": ["is not valid JSON"]}) from None
    else:
        try:
            text = body.decode(request.encoding or "utf-8")
        except (UnicodeDecodeError, LookupError):
            raise PayloadError({"(body)": ["is not valid text in its charset"]}) from None
        if content_type == "application/x-www-form-urlencoded":
            form = QueryDict(text)
            payload = {k: v[0] if len(v) == 1 else v for k, v in form.lists()}
        elif content_type.startswith("multipart/"):
            raise PayloadError({"(body)": ["send JSON, a form or text, not multipart"]}, status=415)
        else:
            payload = text
    bad = unstorable(payload, "payload")
    if bad:
        raise PayloadError({bad[0]: [bad[1]]})
    return payload


class InboundWebhookView(APIView):
    """Starts the webhook's task; the secret or a Standard Webhooks signature is required."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    throttle_classes = [PerWebhookThrottle]

    @extend_schema(
        operation_id="webhooks_receive",
        request={"application/json": {"type": "object"}, "text/plain": {"type": "string"}},
        parameters=[OpenApiParameter("secret", str, description="The webhook's secret")],
        responses={202: RECEIVED, 401: {"type": "object"}, 404: {"type": "object"}},
        auth=[],
    )
    @path_errors
    def post(self, request: Request, webhook_id: str) -> Response:
        hook = (
            TaskWebhook.objects.select_related("task")
            .filter(webhook_id=webhook_id, active=True)
            .first()
        )
        if hook is None:
            return Response({"detail": "no such webhook"}, status=404)
        try:
            body = request.body
        except RequestDataTooBig:
            body = None
        limit = min(settings.SCHEDULER_WEBHOOK_MAX_BYTES, settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
        if body is None or len(body) > limit:
            return Response({"(body)": [f"is larger than the {limit}-byte limit"]}, status=413)
        headers = {key.lower(): value for key, value in request.headers.items()}
        try:
            delivery_id = triggers.webhook_authenticate(
                webhook=hook,
                headers=headers,
                query_secret=request.query_params.get("secret"),
                body=body,
                now=timezone.now(),
            )
        except triggers.WebhookAuthError as exc:
            return Response({"detail": f"not authorized: {exc}"}, status=401)
        if hook.task.status != TaskStatus.ACTIVE:
            return Response({"detail": f"the task is {hook.task.status}"}, status=409)
        received = triggers.webhook_receive(
            webhook=hook,
            delivery_id=delivery_id,
            payload=parse_payload(request, body),
            depth=triggers.depth_from(headers),
        )
        return Response({"executionId": received.execution_id}, status=received.status_code)


def hook_to_json(request: Request, hook: TaskWebhook) -> dict[str, Any]:
    def iso(value: Any) -> str | None:
        return value.isoformat() if value else None

    expires = hook.previous_secret_expires_at
    return {
        "webhookId": hook.webhook_id,
        "webhookUrl": request.build_absolute_uri(f"/api/webhooks/{hook.webhook_id}"),
        "requireSignature": hook.require_signature,
        "active": hook.active,
        "createdAt": iso(hook.created_at),
        "lastUsedAt": iso(hook.last_used_at),
        "previousSecretExpiresAt": iso(expires) if expires and expires > timezone.now() else None,
    }


def _hook(request: Request, pk: str, webhook_id: str) -> TaskWebhook:
    task = get_object_or_404(selectors.tasks_visible_to(caller(request)), pk=pk)
    return get_object_or_404(TaskWebhook, task=task, webhook_id=webhook_id)


def _flag(body: Any, name: str) -> bool | None:
    if not isinstance(body, dict):
        raise PayloadError({"(body)": ["must be a JSON object"]})
    unknown = set(body) - {name}
    if unknown:
        raise PayloadError({str(key): ["unknown field"] for key in unknown})
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise PayloadError({name: ["must be true or false"]})
    return value


class TaskWebhookListView(APIView):
    @extend_schema(
        operation_id="tasks_webhooks_list", responses={200: {"type": "array", "items": HOOK}}
    )
    def get(self, request: Request, pk: str) -> Response:
        task = get_object_or_404(selectors.tasks_visible_to(caller(request)), pk=pk)
        hooks = TaskWebhook.objects.filter(task=task).defer("secret", "previous_secret")
        return Response([hook_to_json(request, hook) for hook in hooks])


class TaskWebhookView(APIView):
    @extend_schema(
        operation_id="tasks_webhooks_update",
        request={
            "application/json": {
                "type": "object",
                "properties": {"requireSignature": {"type": "boolean"}},
            }
        },
        responses={200: HOOK},
    )
    @path_errors
    def patch(self, request: Request, pk: str, webhook_id: str) -> Response:
        hook = _hook(request, pk, webhook_id)
        required = _flag(request.data, "requireSignature")
        if required is not None:
            hook.require_signature = required
            hook.save(update_fields=["require_signature"])
        return Response(hook_to_json(request, hook))

    @extend_schema(operation_id="tasks_webhooks_revoke", responses={204: None})
    def delete(self, request: Request, pk: str, webhook_id: str) -> Response:
        triggers.webhook_revoke(webhook=_hook(request, pk, webhook_id))
        return Response(status=204)


class TaskWebhookRotateView(APIView):
    @extend_schema(
        operation_id="tasks_webhooks_rotate",
        request={
            "application/json": {
                "type": "object",
                "properties": {"graceSeconds": {"type": "integer"}},
            }
        },
        responses={
            200: {
                "type": "object",
                "properties": {**HOOK["properties"], "secret": {"type": "string"}},
            }
        },
    )
    @path_errors
    def post(self, request: Request, pk: str, webhook_id: str) -> Response:
        hook = _hook(request, pk, webhook_id)
        if not hook.active:
            raise PayloadError({"webhookId": ["this webhook is revoked"]}, status=409)
        body = request.data if request.data else {}
        if not isinstance(body, dict) or set(body) - {"graceSeconds"}:
            raise PayloadError({"(body)": ["only graceSeconds may be given"]})
        grace = body.get("graceSeconds", 86_400)
        limit = int(triggers.MAX_ROTATION_GRACE.total_seconds())
        if isinstance(grace, bool) or not isinstance(grace, int) or not 0 <= grace <= limit:
            raise PayloadError({"graceSeconds": [f"must be an integer from 0 to {limit}"]})
        secret = triggers.webhook_rotate(webhook=hook, grace=timedelta(seconds=grace))
        return Response({**hook_to_json(request, hook), "secret": secret})
