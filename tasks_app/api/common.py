"""Shared API plumbing: errors keyed by field path, bounded integer query parameters."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from .payloads import PayloadError


def path_errors(view: Callable[..., Response]) -> Callable[..., Response]:
    """Turn validation failures (ours and the services') into 400s naming field paths."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return view(*args, **kwargs)
        except PayloadError as exc:
            return Response(exc.errors, status=exc.status)
        except DjangoValidationError as exc:
            errors = exc.message_dict if hasattr(exc, "error_dict") else {"(body)": exc.messages}
            return Response(errors, status=400)

    return wrapper


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise PayloadError({name: ["must be an integer"]}) from None
    if not low <= value <= high:
        raise PayloadError({name: [f"must be between {low} and {high}"]})
    return value


def caller(request: Request) -> User:
    """The authenticated user (every API view but health requires one)."""
    user = request.user
    if not isinstance(user, User):
        raise PermissionError("an authenticated user is required")
    return user


def exception_handler(exc: Exception, context: Any) -> Response | None:
    """DRF's handler, plus 413 for bodies over DATA_UPLOAD_MAX_MEMORY_SIZE."""
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return Response({"(body)": [f"is larger than the {limit}-byte limit"]}, status=413)
    return drf_exception_handler(exc, context)
