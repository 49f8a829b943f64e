"""/api/reports: the caller's stored reports, as JSON and as downloadable files.

A report belongs to its owner alone (staff included): another user's report is a 404.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC
from typing import Any

from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.utils.text import slugify
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ..models import Report
from ..services.reports import report_links, reports_of
from . import openapi
from .common import caller, path_errors
from .payloads import PayloadError

FORMATS = {"html": "text/html; charset=utf-8", "md": "text/markdown; charset=utf-8"}
# The HTML is self-contained: inline styles, no scripts, nothing fetched, not framable.
HTML_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; sandbox"
)
ERRORS = openapi.ERRORS
NOT_FOUND = {"type": "object", "properties": {"detail": {"type": "string"}}}
REPORT_FIELDS: dict[str, Any] = {
    "id": {"type": "string", "format": "uuid"},
    "taskId": {"type": "string", "format": "uuid", "nullable": True},
    "executionId": {"type": "string", "format": "uuid", "nullable": True},
    "title": {"type": "string"},
    "createdAt": {"type": "string", "format": "date-time"},
    "url": {"type": "string"},
    "downloadUrl": {"type": "string"},
}
REPORT = {"type": "object", "properties": REPORT_FIELDS}
REPORT_DETAIL = {"type": "object", "properties": {**REPORT_FIELDS, "markdown": {"type": "string"}}}
PAGE = openapi.page(REPORT)


class ReportPagination(LimitOffsetPagination):
    default_limit = 50
    max_limit = 500


class FileNegotiation(DefaultContentNegotiation):
    """``?format=`` picks the file (not a DRF renderer), whatever the Accept header says;
    errors are JSON."""

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))
        return renderer, renderer.media_type


def report_to_json(report: Report, *, markdown: bool = False) -> dict[str, Any]:
    links = report_links(report)
    data: dict[str, Any] = {
        "id": str(report.pk),
        "taskId": str(report.task_id) if report.task_id else None,
        "executionId": str(report.execution_id) if report.execution_id else None,
        "title": report.title,
        "createdAt": report.created_at.astimezone(UTC).isoformat(),
        "url": links["url"],
        "downloadUrl": links["downloadUrl"],
    }
    if markdown:
        data["markdown"] = report.markdown
    return data


def filename(report: Report, extension: str) -> str:
    """ASCII letters, digits and dashes only, so the header needs no quoting rules."""
    stem = slugify(report.title)[:80].strip("-") or "report"
    return f"{stem}-{report.created_at.astimezone(UTC):%Y-%m-%d}.{extension}"


class ReportListView(APIView):
    @extend_schema(
        operation_id="reports_list",
        tags=["reports"],
        parameters=[
            OpenApiParameter("taskId", OpenApiTypes.UUID, description="only this task's"),
            OpenApiParameter("limit", int),
            OpenApiParameter("offset", int),
        ],
        responses={200: PAGE, 400: ERRORS},
    )
    @path_errors
    def get(self, request: Request) -> Response:
        reports = reports_of(caller(request)).defer("html", "markdown")
        task_id = request.query_params.get("taskId")
        if task_id is not None:
            try:
                reports = reports.filter(task_id=uuid.UUID(task_id))
            except ValueError:
                raise PayloadError({"taskId": ["must be a task id (a UUID)"]}) from None
        paginator = ReportPagination()
        page = paginator.paginate_queryset(reports.order_by("-created_at", "pk"), request, self)
        return paginator.get_paginated_response([report_to_json(r) for r in page or []])


class ReportView(APIView):
    @extend_schema(
        operation_id="reports_retrieve",
        tags=["reports"],
        responses={200: REPORT_DETAIL, 404: NOT_FOUND},
    )
    def get(self, request: Request, pk: uuid.UUID) -> Response:
        report = get_object_or_404(reports_of(caller(request)).defer("html"), pk=pk)
        return Response(report_to_json(report, markdown=True))


class ReportDownloadView(APIView):
    content_negotiation_class = FileNegotiation
    renderer_classes = [JSONRenderer]

    @extend_schema(
        operation_id="reports_download",
        tags=["reports"],
        parameters=[
            OpenApiParameter("format", str, enum=list(FORMATS), default="html"),
        ],
        responses={
            (200, "text/html"): OpenApiResponse(OpenApiTypes.STR, description="the report"),
            (200, "text/markdown"): OpenApiResponse(OpenApiTypes.STR, description="the report"),
            (400, "application/json"): ERRORS,
            (404, "application/json"): NOT_FOUND,
        },
    )
    def get(self, request: Request, pk: uuid.UUID) -> HttpResponse:
        wanted = request.query_params.get("format", "html")
        if wanted not in FORMATS:
            return Response({"format": [f"must be one of {', '.join(FORMATS)}"]}, status=400)
        report = get_object_or_404(reports_of(caller(request)), pk=pk)
        body = report.html if wanted == "html" else report.markdown
        response = HttpResponse(body, content_type=FORMATS[wanted])
        response["Content-Disposition"] = f'attachment; filename="{filename(report, wanted)}"'
        response["X-Content-Type-Options"] = "nosniff"
        if wanted == "html":
            response["Content-Security-Policy"] = HTML_CSP
        return response
