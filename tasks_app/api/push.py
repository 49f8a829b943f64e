"""/api/push: the VAPID public key, and the caller's browser push subscriptions.

A browser subscribes with ``pushManager.subscribe({applicationServerKey: publicKey})`` and
posts the resulting PushSubscription JSON here. Everyone sees and removes only their own
subscriptions (staff included: they are per-browser capabilities, not task data).
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec
from django.db import transaction
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiExample, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle, ScopedRateThrottle
from rest_framework.views import APIView

from .. import vapid
from ..models import PushSubscription
from . import openapi
from .common import caller, path_errors
from .payloads import PayloadError

MAX_SUBSCRIPTIONS = 20  # per user: a few browsers and devices each
MAX_ENDPOINT = 2048
P256_POINT_BYTES = 65  # an uncompressed P-256 public key: 0x04, x, y
AUTH_SECRET_BYTES = 16

SUBSCRIPTION_FIELDS: dict[str, serializers.Field] = {
    "id": serializers.UUIDField(),
    "endpoint": serializers.URLField(),
    "createdAt": serializers.DateTimeField(),
}
SUBSCRIPTION = inline_serializer("PushSubscription", SUBSCRIPTION_FIELDS)
SUBSCRIPTIONS = inline_serializer("PushSubscription", SUBSCRIPTION_FIELDS, many=True)
SUBSCRIPTION_INPUT = inline_serializer(
    "PushSubscriptionInput",
    {
        "endpoint": serializers.URLField(),
        "keys": inline_serializer(
            "PushSubscriptionKeys",
            {"p256dh": serializers.CharField(), "auth": serializers.CharField()},
        ),
    },
)
ERRORS = openapi.ERRORS
BROWSER_SUBSCRIPTION = OpenApiExample(
    "A browser's PushSubscription.toJSON()",
    request_only=True,
    value={
        "endpoint": "https://fcm.googleapis.com/fcm/send/c1KrmpTuRm...",
        "keys": {
            "p256dh": "BEl62iUYgUivxIkv69yViEuiBIa-Ib9-SkvMeAtA3LFgDzkrxZJjSgSnfckjBJuBkr3"
            "qBUYIHBQFLXYp5Nksh8U",
            "auth": "tBHItJI5svbpez7KI4CCXg",
        },
    },
)


def subscription_to_json(subscription: PushSubscription) -> dict[str, Any]:
    return {
        "id": str(subscription.pk),
        "endpoint": subscription.endpoint,
        "createdAt": subscription.created_at.astimezone(UTC).isoformat(),
    }


def _b64url(value: Any) -> bytes | None:
    if not isinstance(value, str) or not value or len(value) > 200:
        return None
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None


def _endpoint(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise PayloadError({"endpoint": ["is required: the push service URL"]})
    if len(value) > MAX_ENDPOINT:
        raise PayloadError({"endpoint": [f"must be at most {MAX_ENDPOINT} characters"]})
    parts = urlsplit(value)
    if (
        parts.scheme not in {"http", "https"}
        or not parts.hostname
        or any(c.isspace() for c in value)
    ):
        raise PayloadError({"endpoint": ["must be an http or https URL"]})
    return value


def _p256dh(value: Any) -> str:
    raw = _b64url(value)
    if raw is None or len(raw) != P256_POINT_BYTES or raw[0] != 4:
        raise PayloadError({"keys.p256dh": ["must be a base64url uncompressed P-256 public key"]})
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError:
        raise PayloadError({"keys.p256dh": ["is not a point on the P-256 curve"]}) from None
    return str(value)


def _auth(value: Any) -> str:
    raw = _b64url(value)
    if raw is None or len(raw) != AUTH_SECRET_BYTES:
        raise PayloadError({"keys.auth": [f"must be {AUTH_SECRET_BYTES} bytes in base64url"]})
    return str(value)


def parse_subscription(data: Any) -> tuple[str, str, str]:
    """(endpoint, p256dh, auth) from a browser's PushSubscription JSON."""
    if not isinstance(data, dict):
        raise PayloadError({"(body)": ["must be a JSON object"]})
    endpoint = _endpoint(data.get("endpoint"))
    keys = data.get("keys")
    if not isinstance(keys, dict):
        raise PayloadError({"keys": ["must be an object with p256dh and auth"]})
    return endpoint, _p256dh(keys.get("p256dh")), _auth(keys.get("auth"))


class PushKeyView(APIView):
    @extend_schema(
        responses={200: inline_serializer("PushKey", {"publicKey": serializers.CharField()})}
    )
    def get(self, request: Request) -> Response:
        return Response({"publicKey": vapid.application_server_key()})


class PushSubscriptionListView(APIView):
    throttle_scope = "task-write"

    def get_throttles(self) -> list[BaseThrottle]:
        return [ScopedRateThrottle()] if self.request.method == "POST" else []

    @extend_schema(responses={200: SUBSCRIPTIONS})
    def get(self, request: Request) -> Response:
        subscriptions = PushSubscription.objects.filter(owner=caller(request))
        return Response([subscription_to_json(s) for s in subscriptions])

    @extend_schema(
        request=SUBSCRIPTION_INPUT,
        responses={201: SUBSCRIPTION, 200: SUBSCRIPTION, 400: ERRORS},
        examples=[BROWSER_SUBSCRIPTION],
        description="Save the browser's subscription (201); the same endpoint again "
        "replaces its keys (200).",
    )
    @path_errors
    def post(self, request: Request) -> Response:
        owner = caller(request)
        endpoint, p256dh, auth = parse_subscription(request.data)
        with transaction.atomic():
            existing = PushSubscription.objects.filter(owner=owner)
            if (
                existing.count() >= MAX_SUBSCRIPTIONS
                and not existing.filter(endpoint=endpoint).exists()
            ):
                raise PayloadError(
                    {"endpoint": [f"at most {MAX_SUBSCRIPTIONS} subscriptions; delete one first"]}
                )
            subscription, created = PushSubscription.objects.update_or_create(
                owner=owner, endpoint=endpoint, defaults={"p256dh": p256dh, "auth": auth}
            )
        return Response(subscription_to_json(subscription), status=201 if created else 200)


class PushSubscriptionView(APIView):
    @extend_schema(responses={204: None})
    def delete(self, request: Request, pk: str) -> Response:
        get_object_or_404(PushSubscription, pk=pk, owner=caller(request)).delete()
        return Response(status=204)
