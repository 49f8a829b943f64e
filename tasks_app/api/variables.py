"""/api/variables: the caller's named values, read by ``variable`` conditions.

``{"type": "variable", "field": "environment", "operator": "equals", "value": "production"}``
reads the owner's variable ``environment``. Everyone sees and changes only their own
variables; staff may name another user with ``?userId=<username>``.
"""

from __future__ import annotations

import re
from datetime import UTC
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.http import Http404
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle, ScopedRateThrottle
from rest_framework.views import APIView

from ..models import UserVariable
from ..storable import unstorable
from . import openapi
from .common import caller, path_errors
from .payloads import PayloadError, parse_owner

NAME = re.compile(r"[A-Za-z0-9_.\-]{1,100}")
MAX_VARIABLES = 200  # per user
WRITE_METHODS = frozenset({"PUT", "DELETE"})

ERRORS = openapi.ERRORS
VARIABLE = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,100}$"},
        "value": {"description": "any JSON value"},
        "updatedAt": {"type": "string", "format": "date-time"},
    },
}
VARIABLE_INPUT = {
    "type": "object",
    "properties": {"value": {"description": "any JSON value"}},
    "required": ["value"],
}
USER_ID = OpenApiParameter("userId", str, description="staff: another user's variables")
ENVIRONMENT = OpenApiExample(
    "The variable the guide's variable condition reads",
    request_only=True,
    value={"value": "production"},
)


def variable_to_json(variable: UserVariable) -> dict[str, Any]:
    return {
        "name": variable.name,
        "value": variable.value,
        "updatedAt": variable.updated_at.astimezone(UTC).isoformat(),
    }


def parse_name(name: str) -> str:
    """A variable name: 1-100 of letters, digits, ``_``, ``.`` and ``-``."""
    if not NAME.fullmatch(name):
        raise PayloadError({"name": ["must be 1-100 characters of A-Z, a-z, 0-9, '_', '.', '-'"]})
    return name


def parse_value(data: Any) -> Any:
    """The ``value`` of a ``{"value": ...}`` body: any JSON a database can store."""
    if not isinstance(data, dict):
        raise PayloadError({"(body)": ["must be a JSON object with a 'value'"]})
    unknown = sorted(str(key) for key in data if key != "value")
    if unknown:
        raise PayloadError({key: ["unknown field"] for key in unknown})
    if "value" not in data:
        raise PayloadError({"value": ["is required (any JSON value, null included)"]})
    bad = unstorable(data["value"], "value")
    if bad:
        raise PayloadError({bad[0]: [bad[1]]})
    return data["value"]


def owner_of(request: Request) -> User:
    """The caller, or (staff only) the user named by ``?userId=``."""
    return parse_owner({"userId": request.query_params.get("userId")}, caller(request))


def variable_put(*, owner: User, name: str, value: Any) -> UserVariable:
    """Create or replace ``owner``'s variable ``name``."""
    with transaction.atomic():
        mine = UserVariable.objects.filter(owner=owner)
        if mine.count() >= MAX_VARIABLES and not mine.filter(name=name).exists():
            raise PayloadError({"name": [f"at most {MAX_VARIABLES} variables; delete one first"]})
        variable, _ = UserVariable.objects.update_or_create(
            owner=owner, name=name, defaults={"value": value}
        )
    return variable


class WriteThrottled(APIView):
    """Writes count against the ``task-write`` rate; reads are free."""

    throttle_scope = "task-write"

    def get_throttles(self) -> list[BaseThrottle]:
        return [ScopedRateThrottle()] if self.request.method in WRITE_METHODS else []


class VariableListView(APIView):
    @extend_schema(
        operation_id="variables_list",
        parameters=[USER_ID],
        responses={200: {"type": "array", "items": VARIABLE}, 403: ERRORS},
    )
    @path_errors
    def get(self, request: Request) -> Response:
        variables = UserVariable.objects.filter(owner=owner_of(request)).order_by("name")
        return Response([variable_to_json(v) for v in variables])


class VariableView(WriteThrottled):
    def _variable(self, request: Request, name: str) -> UserVariable:
        owner = owner_of(request)
        variable = UserVariable.objects.filter(owner=owner, name=parse_name(name)).first()
        if variable is None:
            raise Http404(f"no variable named {name!r}")
        return variable

    @extend_schema(parameters=[USER_ID], responses={200: VARIABLE, 400: ERRORS, 404: None})
    @path_errors
    def get(self, request: Request, name: str) -> Response:
        return Response(variable_to_json(self._variable(request, name)))

    @extend_schema(
        parameters=[USER_ID],
        request={"application/json": VARIABLE_INPUT},
        responses={200: VARIABLE, 400: ERRORS, 403: ERRORS},
        examples=[ENVIRONMENT],
        description="Create or replace the variable (200 either way).",
    )
    @path_errors
    def put(self, request: Request, name: str) -> Response:
        owner = owner_of(request)
        variable = variable_put(owner=owner, name=parse_name(name), value=parse_value(request.data))
        return Response(variable_to_json(variable))

    @extend_schema(parameters=[USER_ID], responses={204: None, 400: ERRORS, 404: None})
    @path_errors
    def delete(self, request: Request, name: str) -> Response:
        self._variable(request, name).delete()
        return Response(status=204)
