"""API tokens, stored hashed: DRF's ``Authorization: Token <key>`` as the contract says,
but the ``authtoken_token`` table holds only a digest of each key (like a password), so a
database dump or backup gives nobody a working key. A key is shown once, when it is made
(``python manage.py drf_create_token <user>``, ``manage.py up``'s first start)."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from django.db import transaction
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token


def token_digest(key: str) -> str:
    """What the table stores for ``key``: 40 hex digits (the column's size). The keys are
    160 random bits, so a plain cryptographic hash is enough (no salt, no stretching)."""
    return hashlib.blake2b(key.encode(), digest_size=20, person=b"sched-api-tok").hexdigest()


def token_issue(user: Any) -> str:
    """Make ``user`` a new key (replacing any old one) and return it: the only time it
    is ever seen."""
    key = secrets.token_hex(20)
    with transaction.atomic():
        Token.objects.filter(user=user).delete()
        Token.objects.create(user=user, key=token_digest(key))
    return key


def token_matches(user: Any, key: str) -> bool:
    return Token.objects.filter(user=user, key=token_digest(key)).exists()


class HashedTokenAuthentication(TokenAuthentication):
    """DRF's token authentication, looking the key up by its digest."""

    def authenticate_credentials(self, key: str) -> Any:
        return super().authenticate_credentials(token_digest(key))
