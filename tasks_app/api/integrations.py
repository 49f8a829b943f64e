"""/api/integrations/google: the caller's Google credentials for google-workspace actions.

PUT a service-account key file's JSON (optionally with ``"subject"``, the mailbox to act
as through domain-wide delegation) or an authorized-user JSON (``client_id``,
``client_secret``, ``refresh_token``). Only the fields the executor uses are kept, and
they are stored encrypted (``FIELD_ENCRYPTION_KEYS``). No answer ever carries a secret:
GET and PUT show a summary (type, client e-mail, client id, subject, updatedAt), and
error messages name fields without echoing their values. Everyone sees and replaces only
their own credentials (staff included: they are capabilities, not task data).
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_email
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle, ScopedRateThrottle
from rest_framework.views import APIView

from ..models import GoogleCredential
from ..storable import unstorable
from . import openapi
from .common import caller, path_errors
from .payloads import PayloadError

SERVICE_ACCOUNT = "service_account"
AUTHORIZED_USER = "authorized_user"
#: Per type: the fields that must be present, and the optional ones also kept. Anything
#: else in a key file (token_uri, auth_uri, cert URLs...) is dropped: the executor always
#: talks to Google's own token endpoint.
REQUIRED = {
    SERVICE_ACCOUNT: ("client_email", "private_key"),
    AUTHORIZED_USER: ("client_id", "client_secret", "refresh_token"),
}
OPTIONAL = {
    SERVICE_ACCOUNT: ("client_id", "private_key_id", "project_id", "subject"),
    AUTHORIZED_USER: ("quota_project_id",),
}
EMAIL_FIELDS = frozenset({"client_email", "subject"})
MAX_FIELD_CHARS = 2048
MAX_KEY_CHARS = 16_384  # a PEM RSA key of 4096 bits is about 3.3 kB
WRITE_METHODS = frozenset({"PUT", "DELETE"})

ERRORS = {**openapi.ERRORS, "description": "field path -> reasons (never the values)"}
SUMMARY = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "enum": [SERVICE_ACCOUNT, AUTHORIZED_USER]},
        "clientEmail": {"type": "string", "description": "service accounts"},
        "clientId": {"type": "string"},
        "subject": {"type": "string", "description": "service accounts with delegation"},
        "updatedAt": {"type": "string", "format": "date-time"},
    },
    "required": ["type", "updatedAt"],
}
CREDENTIALS_INPUT = {
    "type": "object",
    "description": "a service-account key file (optionally with subject) or an "
    "authorized-user JSON (client_id, client_secret, refresh_token)",
    "properties": {"type": {"type": "string", "enum": [SERVICE_ACCOUNT, AUTHORIZED_USER]}},
    "required": ["type"],
    "additionalProperties": True,
}
EXAMPLES = [
    OpenApiExample(
        "A service-account key file, delegated to a mailbox",
        request_only=True,
        value={
            "type": SERVICE_ACCOUNT,
            "project_id": "my-project",
            "private_key_id": "0123456789abcdef",
            "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEv...\n-----END PRIVATE KEY-----\n",
            "client_email": "scheduler@my-project.iam.gserviceaccount.com",
            "client_id": "104242424242424242424",
            "subject": "reports@example.com",
        },
    ),
    OpenApiExample(
        "An authorized user (OAuth refresh token)",
        request_only=True,
        value={
            "type": AUTHORIZED_USER,
            "client_id": "1234.apps.googleusercontent.com",
            "client_secret": "GOCSPX-...",
            "refresh_token": "1//0g...",
        },
    ),
]


def credential_summary(row: GoogleCredential) -> dict[str, Any]:
    """What may be shown about stored credentials: identities, never secrets."""
    info: dict[str, Any] = row.credentials if isinstance(row.credentials, dict) else {}
    summary: dict[str, Any] = {"type": info.get("type")}
    for field, shown in (("client_email", "clientEmail"), ("client_id", "clientId")):
        if info.get(field):
            summary[shown] = info[field]
    if info.get("subject"):
        summary["subject"] = info["subject"]
    summary["updatedAt"] = row.updated_at.astimezone(UTC).isoformat()
    return summary


def _text(data: dict[str, Any], field: str, *, required: bool) -> str | None:
    """A single-line, non-empty string field (the private key alone spans lines)."""
    value = data.get(field)
    if value is None or value == "":
        if required:
            raise PayloadError({field: ["is required"]})
        return None
    limit = MAX_KEY_CHARS if field == "private_key" else MAX_FIELD_CHARS
    if not isinstance(value, str) or len(value) > limit:
        raise PayloadError({field: [f"must be a string of at most {limit} characters"]})
    if field != "private_key" and any(ch in value for ch in "\r\n"):
        raise PayloadError({field: ["must be a single line"]})
    if field in EMAIL_FIELDS:
        try:
            validate_email(value)
        except DjangoValidationError:
            raise PayloadError({field: ["must be an e-mail address"]}) from None
    return value


def _check_private_key(pem: str) -> None:
    """The key must be an unencrypted PEM RSA private key (what Google issues); the error
    never repeats any of it."""
    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise PayloadError(
            {"private_key": ["must be the unencrypted PEM RSA private key of the key file"]}
        )


def parse_credentials(data: Any) -> dict[str, Any]:
    """The credentials to store, from a PUT body; PayloadError names the bad field."""
    if not isinstance(data, dict):
        raise PayloadError({"(body)": ["must be a JSON object: the credentials file"]})
    bad = unstorable(data)
    if bad:
        raise PayloadError({bad[0]: [bad[1]]})
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in REQUIRED:
        raise PayloadError({"type": [f"must be {SERVICE_ACCOUNT!r} or {AUTHORIZED_USER!r}"]})
    if kind == AUTHORIZED_USER and data.get("subject"):
        raise PayloadError({"subject": ["only a service account acts for another mailbox"]})
    stored: dict[str, Any] = {"type": kind}
    for field in REQUIRED[kind]:
        stored[field] = _text(data, field, required=True)
    for field in OPTIONAL[kind]:
        value = _text(data, field, required=False)
        if value is not None:
            stored[field] = value
    if kind == SERVICE_ACCOUNT:
        _check_private_key(stored["private_key"])
    return stored


class GoogleCredentialView(APIView):
    throttle_scope = "task-write"

    def get_throttles(self) -> list[BaseThrottle]:
        return [ScopedRateThrottle()] if self.request.method in WRITE_METHODS else []

    @extend_schema(responses={200: SUMMARY, 404: None})
    def get(self, request: Request) -> Response:
        row = get_object_or_404(GoogleCredential, owner=caller(request))
        return Response(credential_summary(row))

    @extend_schema(
        request={"application/json": CREDENTIALS_INPUT},
        responses={200: SUMMARY, 400: ERRORS},
        examples=EXAMPLES,
        description="Store (or replace) the caller's Google credentials, encrypted. The "
        "answer is a summary without the private key, client secret or refresh token.",
    )
    @path_errors
    def put(self, request: Request) -> Response:
        credentials = parse_credentials(request.data)
        # EncryptedJSONField is a TextField to the type checker; it stores any JSON.
        defaults: dict[str, Any] = {"credentials": credentials}
        row, _ = GoogleCredential.objects.update_or_create(owner=caller(request), defaults=defaults)
        return Response(credential_summary(row))

    @extend_schema(responses={204: None, 404: None})
    def delete(self, request: Request) -> Response:
        get_object_or_404(GoogleCredential, owner=caller(request)).delete()
        return Response(status=204)
