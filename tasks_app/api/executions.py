"""/api/executions/{id}: one execution with its logs."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import selectors
from . import openapi
from .common import caller
from .payloads import execution_to_json


class ExecutionView(APIView):
    @extend_schema(responses={200: openapi.ref("Execution")})
    def get(self, request: Request, pk: str) -> Response:
        execution = get_object_or_404(selectors.executions_visible_to(caller(request)), pk=pk)
        return Response(execution_to_json(execution))
