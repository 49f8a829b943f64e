"""Secrets at rest: Fernet tokens under FIELD_ENCRYPTION_KEYS (newest first); older keys
still decrypt, and rotate_encryption_keys moves every value to the newest key."""

from __future__ import annotations

import io
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.db import connection

from tasks_app import fields
from tasks_app.models import GoogleCredential, ScheduledTask, TaskWebhook
from tasks_app.services import triggers

pytestmark = pytest.mark.django_db


def raw(table: str, column: str) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL")
        return [row[0] for row in cursor.fetchall()]


def test_keys_rotate_without_losing_a_secret(settings: Any, user: Any) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [old]
    task = ScheduledTask.objects.create(
        owner=user,
        name="hooked",
        type="trigger",
        trigger={"type": "webhook", "config": {}},
        action={"type": "webhook", "url": "https://example.com/x"},
    )
    hook, secret = triggers.webhook_create(task=task)
    GoogleCredential.objects.create(owner=user, credentials={"type": "authorized_user"})
    before = raw("task_webhooks", "secret") + raw("google_credentials", "credentials")
    assert all(secret not in token for token in before)

    settings.FIELD_ENCRYPTION_KEYS = [new, old]  # a new key first: old values still read
    assert TaskWebhook.objects.get(pk=hook.pk).secret == secret
    call_command("rotate_encryption_keys", stdout=io.StringIO())
    after = raw("task_webhooks", "secret") + raw("google_credentials", "credentials")
    assert set(after).isdisjoint(before)

    settings.FIELD_ENCRYPTION_KEYS = [new]  # the old key is gone: everything still reads
    assert TaskWebhook.objects.get(pk=hook.pk).secret == secret
    assert GoogleCredential.objects.get(owner=user).credentials == {"type": "authorized_user"}
    assert Fernet(new.encode()).decrypt(after[0].encode()).decode() == secret


def test_a_value_under_a_removed_key_fails_loudly(settings: Any) -> None:
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    token = fields.encrypt("s3cret")
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(Exception, match="could not be decrypted"):
        fields.decrypt(token)
