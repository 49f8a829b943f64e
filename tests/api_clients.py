"""API clients for tests: one that sends a real token (as a caller would), or one with
authentication forced (when the test is not about how the caller signs in)."""

from __future__ import annotations

from typing import Any

from rest_framework.test import APIClient

from tasks_app.auth import token_issue


def token_client(user: Any) -> APIClient:
    """A client that sends ``Authorization: Token …`` for ``user`` (a new token)."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_issue(user)}")
    return client


def client_for(django_user_model: Any, username: str, **extra: Any) -> APIClient:
    """A new user named ``username`` (with ``extra`` fields, e.g. is_staff) and its
    token client."""
    return token_client(django_user_model.objects.create(username=username, **extra))


def forced_client(user: Any) -> APIClient:
    """A client authenticated as ``user`` without a token."""
    client = APIClient()
    client.force_authenticate(user)
    return client
