"""/api/tasks: the guide's task endpoints."""

from __future__ import annotations

import uuid

from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    extend_schema,
    extend_schema_view,
)
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle, ScopedRateThrottle

from .. import selectors
from ..models import ScheduledTask, TaskStatus, TaskType, TriggerType
from ..services import definitions, dispatch, triggers
from ..storable import unstorable
from . import openapi
from .common import caller, int_param, path_errors
from .payloads import PayloadError, execution_to_json, parse_owner, parse_task, task_to_json
from .schedules import PREVIEW
from .webhooks import hook_to_json


class TaskPagination(LimitOffsetPagination):
    default_limit = 50
    max_limit = 500


THROTTLE_SCOPES = {
    "create": "task-write",
    "update": "task-write",
    "partial_update": "task-write",
    "bulk": "task-write",
    "run": "task-run",
    "preview": "preview",
}
BULK_ACTIONS = {
    "pause": definitions.task_pause,
    "resume": definitions.task_resume,
    "delete": definitions.task_delete,
}
MAX_BULK_IDS = 1000


ERRORS = {**openapi.ERRORS, "example": {"schedule.cron": ["..."]}}
TASK = openapi.ref("Task")
EXECUTION = openapi.ref("Execution")
GUIDE_CREATE = OpenApiExample(
    "Daily report (the guide)",
    request_only=True,
    value={
        "userId": "user-id",
        "name": "Daily Report",
        "description": "Generate daily analytics report",
        "type": "recurring",
        "schedule": {"cron": "0 9 * * *", "timezone": "America/New_York"},
        "action": {
            "type": "webhook",
            "url": "https://api.example.com/notify",
            "method": "POST",
            "body": {"message": "Task completed"},
        },
        "retryPolicy": {"maxRetries": 3, "backoffMs": 60000},
        "notification": {"onSuccess": False, "onFailure": True, "channels": ["email"]},
    },
)
LIMIT = OpenApiParameter("limit", int, description="how many, newest first")


@extend_schema_view(
    list=extend_schema(
        parameters=[
            OpenApiParameter("status", str, enum=TaskStatus.values),
            OpenApiParameter("type", str, enum=TaskType.values),
            OpenApiParameter("userId", str, description="staff: another user's tasks"),
            OpenApiParameter("limit", int),
            OpenApiParameter("offset", int),
        ],
        responses={
            200: openapi.page(TASK),
            400: ERRORS,
        },
    ),
    create=extend_schema(
        request={"application/json": openapi.ref("TaskInput")},
        examples=[GUIDE_CREATE],
        responses={201: TASK, 400: ERRORS, 403: ERRORS, 413: ERRORS},
    ),
    retrieve=extend_schema(responses={200: TASK}),
    update=extend_schema(
        request={"application/json": openapi.ref("TaskUpdate")}, responses={200: TASK, 400: ERRORS}
    ),
    partial_update=extend_schema(
        request={"application/json": openapi.ref("TaskUpdate")}, responses={200: TASK, 400: ERRORS}
    ),
    destroy=extend_schema(responses={204: None}),
    pause=extend_schema(
        request={
            "application/json": {
                "type": "object",
                "properties": {"reason": {"type": "string", "maxLength": 500}},
            }
        },
        responses={200: TASK, 400: ERRORS},
    ),
    resume=extend_schema(request=None, responses={200: TASK}),
    run=extend_schema(request=None, responses={202: EXECUTION}),
    executions=extend_schema(
        parameters=[LIMIT], responses={200: {"type": "array", "items": EXECUTION}, 400: ERRORS}
    ),
    upcoming=extend_schema(
        parameters=[LIMIT],
        responses={
            200: {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "taskId": {"type": "string"},
                        "name": {"type": "string"},
                        "type": {"type": "string"},
                        "nextRun": {"type": "string", "format": "date-time"},
                    },
                },
            },
            400: ERRORS,
        },
    ),
    preview=extend_schema(
        parameters=[OpenApiParameter("count", int)], responses={200: PREVIEW, 400: ERRORS}
    ),
    bulk=extend_schema(
        request={
            "application/json": {
                "type": "object",
                "required": ["action", "ids"],
                "properties": {
                    "action": {"type": "string", "enum": ["pause", "resume", "delete"]},
                    "ids": {"type": "array", "items": {"type": "string", "format": "uuid"}},
                },
            }
        },
        responses={
            200: {"type": "object", "properties": {"count": {"type": "integer"}}},
            400: ERRORS,
        },
    ),
    webhook=extend_schema(
        request={
            "application/json": {
                "type": "object",
                "properties": {"requireSignature": {"type": "boolean"}},
            }
        },
        responses={
            201: {
                "type": "object",
                "properties": {
                    "webhookId": {"type": "string"},
                    "webhookUrl": {"type": "string"},
                    "secret": {"type": "string"},
                    "requireSignature": {"type": "boolean"},
                },
            },
            400: ERRORS,
        },
    ),
)
class TaskViewSet(viewsets.ViewSet):
    lookup_value_regex = "[0-9a-fA-F-]{32,36}"

    def get_throttles(self) -> list[BaseThrottle]:
        self.throttle_scope = THROTTLE_SCOPES.get(self.action or "", "")
        return [ScopedRateThrottle()] if self.throttle_scope else []

    def _task(self, request: Request, pk: str) -> ScheduledTask:
        try:
            task_id = uuid.UUID(pk)
        except ValueError:
            raise Http404 from None
        return get_object_or_404(selectors.tasks_visible_to(caller(request)), pk=task_id)

    def _listed(self, request: Request) -> QuerySet[ScheduledTask]:
        tasks = selectors.tasks_visible_to(caller(request))
        user_id = request.query_params.get("userId")
        if user_id and user_id != caller(request).get_username():
            if not caller(request).is_staff:
                raise PayloadError({"userId": ["only staff may list another user's tasks"]}, 403)
            tasks = tasks.filter(owner__username=user_id)
        else:
            tasks = tasks.filter(owner=caller(request))
        for param, values in (("status", TaskStatus.values), ("type", TaskType.values)):
            value = request.query_params.get(param)
            if value is not None:
                if value not in values:
                    raise PayloadError({param: [f"must be one of {', '.join(values)}"]})
                tasks = tasks.filter(**{param: value})
        return tasks.order_by("-created_at", "pk")

    @path_errors
    def list(self, request: Request) -> Response:
        paginator = TaskPagination()
        page = paginator.paginate_queryset(self._listed(request), request, view=self)
        return paginator.get_paginated_response([task_to_json(t) for t in page or []])

    @path_errors
    def create(self, request: Request) -> Response:
        owner = parse_owner(request.data, caller(request))
        fields = parse_task(request.data)
        missing = [k for k in ("name", "type", "action") if k not in fields]
        if missing:
            raise PayloadError({key: ["is required"] for key in missing})
        task = definitions.task_create(owner=owner, **fields)
        return Response(task_to_json(task, reveal_secrets=True), status=201)

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(task_to_json(self._task(request, pk)))

    @path_errors
    def update(self, request: Request, pk: str, partial: bool = True) -> Response:
        task = self._task(request, pk)
        fields = parse_task(request.data, task=task)
        if "userId" in request.data and parse_owner(request.data, caller(request)) != task.owner:
            raise PayloadError({"userId": ["the owner of a task cannot be changed"]})
        task = definitions.task_update(task=task, **fields)
        return Response(task_to_json(task))

    def partial_update(self, request: Request, pk: str) -> Response:
        return self.update(request, pk)

    def destroy(self, request: Request, pk: str) -> Response:
        definitions.task_delete(task=self._task(request, pk))
        return Response(status=204)

    @action(detail=True, methods=["post"])
    @path_errors
    def pause(self, request: Request, pk: str) -> Response:
        task = self._task(request, pk)
        body = request.data if request.data else {}
        if not isinstance(body, dict) or set(body) - {"reason"}:
            raise PayloadError({"(body)": ["only a reason may be given"]})
        reason = body.get("reason", "")
        if not isinstance(reason, str) or len(reason) > 500 or unstorable(reason):
            raise PayloadError({"reason": ["must be text of at most 500 characters"]})
        return Response(task_to_json(definitions.task_pause(task=task, reason=reason.strip())))

    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str) -> Response:
        return Response(task_to_json(definitions.task_resume(task=self._task(request, pk))))

    @action(detail=True, methods=["post"])
    def run(self, request: Request, pk: str) -> Response:
        execution = dispatch.task_run_now(task=self._task(request, pk))
        return Response(execution_to_json(execution), status=202)

    @action(detail=True, methods=["get"])
    @path_errors
    def executions(self, request: Request, pk: str) -> Response:
        limit = int_param(request, "limit", 50, 1, 500)
        task = self._task(request, pk)
        rows = task.executions.defer("logs").order_by("-queued_at")[:limit]
        return Response([execution_to_json(e, logs=False) for e in rows])

    @action(detail=False, methods=["get"])
    @path_errors
    def upcoming(self, request: Request) -> Response:
        limit = int_param(request, "limit", 10, 1, 500)
        return Response(
            [
                {
                    "taskId": str(t.pk),
                    "name": t.name,
                    "type": t.type,
                    "nextRun": t.next_run.isoformat(),
                }
                for t in selectors.upcoming_runs(caller(request), limit=limit)
                if t.next_run
            ]
        )

    @action(detail=True, methods=["get"])
    @path_errors
    def preview(self, request: Request, pk: str) -> Response:
        count = int_param(request, "count", 10, 1, 500)
        return Response(selectors.task_preview(self._task(request, pk), count=count))

    @action(detail=False, methods=["post"])
    @path_errors
    def bulk(self, request: Request) -> Response:
        body = request.data if isinstance(request.data, dict) else {}
        errors: dict[str, list[str]] = {}
        verb, ids = body.get("action"), body.get("ids")
        if not isinstance(verb, str) or verb not in BULK_ACTIONS:
            errors["action"] = [f"must be one of {', '.join(BULK_ACTIONS)}"]
        if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_BULK_IDS:
            errors["ids"] = [f"must be a list of 1 to {MAX_BULK_IDS} task ids"]
        else:
            for index, value in enumerate(ids):
                try:
                    uuid.UUID(str(value))
                except ValueError:
                    errors[f"ids[{index}]"] = ["is not a task id"]
        for key in set(body) - {"action", "ids"}:
            errors[str(key)] = ["unknown field"]
        if errors or not isinstance(ids, list):
            raise PayloadError(errors)
        apply = BULK_ACTIONS[str(verb)]
        with transaction.atomic():
            tasks = list(selectors.tasks_visible_to(caller(request)).filter(pk__in=ids))
            for task in tasks:
                apply(task=task)
        return Response({"count": len(tasks)})

    @action(detail=True, methods=["post"])
    @path_errors
    def webhook(self, request: Request, pk: str) -> Response:
        task = self._task(request, pk)
        if task.type != TaskType.TRIGGER or (task.trigger or {}).get("type") != TriggerType.WEBHOOK:
            raise PayloadError({"trigger.type": ["only webhook-triggered tasks have webhook URLs"]})
        body = request.data if request.data else {}
        if not isinstance(body, dict) or set(body) - {"requireSignature"}:
            raise PayloadError({"(body)": ["only requireSignature may be given"]})
        required = body.get("requireSignature")
        if required is not None and not isinstance(required, bool):
            raise PayloadError({"requireSignature": ["must be true or false"]})
        hook, secret = triggers.webhook_create(task=task, require_signature=required)
        return Response({**hook_to_json(request, hook), "secret": secret}, status=201)
