"""Trigger-based runs: inbound webhooks (secrets, Standard Webhooks signatures, replay
protection, rotation), custom and system events, and loop protection.

Every trigger-started execution carries a ``trigger_depth``: 0 for a request from
outside, and one more than the execution whose action caused it (our outbound requests
send ``X-Scheduler-Trigger-Depth``; system events count from their source). Past
``MAX_TRIGGER_DEPTH`` the execution is recorded as failed and its action never runs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from executors.webhook import DEPTH_HEADER

from .. import rows
from ..models import (
    ExecutionStatus,
    ExecutionTrigger,
    ScheduledTask,
    TaskExecution,
    TaskStatus,
    TaskType,
    TaskWebhook,
    WebhookDelivery,
)
from .dispatch import execution_publish

MAX_TRIGGER_DEPTH = 5
SIGNATURE_TOLERANCE = timedelta(minutes=5)
MAX_ROTATION_GRACE = timedelta(days=7)
EVENT_NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,100}$")
SYSTEM_EVENTS = ("task.completed", "task.failed")


class WebhookAuthError(Exception):
    """The request did not prove it knows the webhook's secret."""


@dataclass(frozen=True)
class Received:
    execution_id: str | None
    status_code: int
    replay: bool = False


# --- secrets ------------------------------------------------------------------------------


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 24 random bytes, drawn again
    until the base64 has no ``+`` or ``/`` so it also works unescaped in ``?secret=``."""
    while True:
        encoded = base64.b64encode(secrets.token_bytes(24)).decode()
        if "+" not in encoded and "/" not in encoded:
            return "whsec_" + encoded


def signing_key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except ValueError:
            pass
    return secret.encode()


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The ``v1,<base64>`` signature of one delivery (as a sender computes it)."""
    message = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), message, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def webhook_create(
    *, task: ScheduledTask, require_signature: bool | None = None
) -> tuple[TaskWebhook, str]:
    if require_signature is None:
        require_signature = bool((task.trigger or {}).get("config", {}).get("requireSignature"))
    secret = new_secret()
    hook = TaskWebhook.objects.create(
        task=task,
        webhook_id=secrets.token_urlsafe(18),
        secret=secret,
        require_signature=require_signature,
    )
    return hook, secret


def webhook_rotate(*, webhook: TaskWebhook, grace: timedelta) -> str:
    """A new secret; the old one stays valid for ``grace`` (two valid secrets meanwhile)."""
    grace = min(max(grace, timedelta(0)), MAX_ROTATION_GRACE)
    secret = new_secret()
    webhook.previous_secret = webhook.secret if grace else None
    webhook.previous_secret_expires_at = timezone.now() + grace if grace else None
    webhook.secret = secret
    webhook.save(update_fields=["secret", "previous_secret", "previous_secret_expires_at"])
    return secret


def webhook_revoke(*, webhook: TaskWebhook) -> None:
    webhook.active = False
    webhook.revoked_at = timezone.now()
    webhook.save(update_fields=["active", "revoked_at"])


def _valid_secrets(webhook: TaskWebhook, now: datetime) -> list[str]:
    valid = [webhook.secret]
    if (
        webhook.previous_secret
        and webhook.previous_secret_expires_at
        and webhook.previous_secret_expires_at > now
    ):
        valid.append(webhook.previous_secret)
    return valid


def webhook_authenticate(
    *,
    webhook: TaskWebhook,
    headers: Mapping[str, str],
    query_secret: str | None,
    body: bytes,
    now: datetime,
) -> str | None:
    """Check the request; returns its ``webhook-id`` (None when it sent none)."""
    valid = _valid_secrets(webhook, now)
    delivery_id = headers.get("webhook-id")
    if headers.get("webhook-signature"):
        _check_signature(valid, headers, body, now)
        return delivery_id
    if webhook.require_signature:
        raise WebhookAuthError("this webhook accepts only signed requests")
    given = headers.get("x-webhook-secret") or query_secret
    if not given:
        raise WebhookAuthError("no secret and no signature")
    if not any(hmac.compare_digest(given.encode(), secret.encode()) for secret in valid):
        raise WebhookAuthError("wrong secret")
    return delivery_id


def _check_signature(
    valid: list[str], headers: Mapping[str, str], body: bytes, now: datetime
) -> None:
    delivery_id = headers.get("webhook-id") or ""
    timestamp = headers.get("webhook-timestamp") or ""
    if not delivery_id or not timestamp.isdigit():
        raise WebhookAuthError("a signed request needs webhook-id and webhook-timestamp")
    sent = datetime.fromtimestamp(int(timestamp), tz=now.tzinfo)
    if abs(now - sent) > SIGNATURE_TOLERANCE:
        raise WebhookAuthError("the signature's timestamp is too old or in the future")
    offered = [
        part.split(",", 1)[1]
        for part in (headers.get("webhook-signature") or "").split()
        if part.startswith("v1,")
    ]
    for secret in valid:
        expected = sign(secret, delivery_id, timestamp, body).split(",", 1)[1]
        if any(hmac.compare_digest(expected.encode(), given.encode()) for given in offered):
            return
    raise WebhookAuthError("no valid signature")


# --- starting runs ----------------------------------------------------------------------


def trigger_start(
    *, task: ScheduledTask, trigger: str, payload: Any, depth: int = 0
) -> TaskExecution:
    """Queue one triggered execution; past the depth limit it is recorded as failed."""
    with transaction.atomic():
        if depth > MAX_TRIGGER_DEPTH:
            now = timezone.now()
            return TaskExecution.objects.create(
                task=task,
                trigger=trigger,
                payload=payload,
                trigger_depth=depth,
                status=ExecutionStatus.FAILED,
                completed_at=now,
                error=(
                    f"trigger loop: this run would be trigger depth {depth}, over the limit "
                    f"of {MAX_TRIGGER_DEPTH}; a trigger is feeding itself, so it was not run"
                ),
            )
        execution = TaskExecution.objects.create(
            task=task, trigger=trigger, payload=payload, trigger_depth=depth
        )
        execution_publish(execution=execution, attempt=1)
    return execution


def webhook_receive(
    *, webhook: TaskWebhook, delivery_id: str | None, payload: Any, depth: int
) -> Received:
    """Start the webhook's task once per delivery id (a replay answers as the first did)."""
    with transaction.atomic():
        if delivery_id:
            seen = WebhookDelivery.objects.filter(webhook=webhook, delivery_id=delivery_id).first()
            if seen is not None:
                return Received(_id(seen.execution_id), seen.status_code, replay=True)
        execution = trigger_start(
            task=webhook.task, trigger=ExecutionTrigger.WEBHOOK, payload=payload, depth=depth
        )
        TaskWebhook.objects.filter(pk=webhook.pk).update(last_used_at=timezone.now())
        if delivery_id:
            try:
                with transaction.atomic():
                    WebhookDelivery.objects.create(
                        webhook=webhook, delivery_id=delivery_id, execution=execution
                    )
            except IntegrityError:
                # The same delivery raced us and won: ours must not run.
                seen = WebhookDelivery.objects.filter(
                    webhook=webhook, delivery_id=delivery_id
                ).first()
                transaction.set_rollback(True)
                return Received(_id(seen.execution_id if seen else None), 202, replay=True)
    return Received(str(execution.pk), 202)


def _id(value: Any) -> str | None:
    return None if value is None else str(value)


def listeners(owner_id: int, name: str) -> list[tuple[str, Any]]:
    """The conditions (``rows``) of the owner's tasks that run on the event ``name``,
    answered by the (owner, listens_for) index."""
    return [
        ("owner_id", owner_id),
        ("listens_for", name),
        ("listens_for", rows.Not("")),  # the index's own condition: SQLite uses it only so
        ("status", TaskStatus.ACTIVE),
        ("type", TaskType.TRIGGER),
    ]


def system_event_name(status: str) -> str:
    return "task.completed" if status == ExecutionStatus.COMPLETED else "task.failed"


def event_emit(
    *,
    owner_id: int,
    name: str,
    payload: Any,
    depth: int = 0,
    source_task_id: Any = None,
) -> list[TaskExecution]:
    """Run every active task of the owner whose trigger is the event ``name``."""
    if not rows.exists(ScheduledTask, listeners(owner_id, name)):  # the usual answer
        return []
    tasks = ScheduledTask.objects.filter(
        owner_id=owner_id, listens_for=name, status=TaskStatus.ACTIVE, type=TaskType.TRIGGER
    )
    started = []
    for task in tasks.order_by("created_at"):
        if source_task_id is not None and task.pk == source_task_id:
            continue  # a task never triggers itself through its own outcome
        wanted_source = (task.trigger or {}).get("config", {}).get("taskId")
        if wanted_source and str(wanted_source) != str(source_task_id):
            continue
        started.append(
            trigger_start(task=task, trigger=ExecutionTrigger.EVENT, payload=payload, depth=depth)
        )
    return started


def system_event_emit(*, execution: TaskExecution, status: str) -> None:
    """``task.completed`` / ``task.failed`` for an execution that just finished."""
    task = execution.task
    name = system_event_name(status)
    payload = {
        "event": name,
        "task": {"id": str(task.pk), "name": task.name},
        "execution": {
            "id": str(execution.pk),
            "status": status,
            "trigger": execution.trigger,
            "error": execution.error or None,
            "result": execution.result,
        },
    }
    event_emit(
        owner_id=task.owner_id,
        name=name,
        payload=payload,
        depth=execution.trigger_depth + 1,
        source_task_id=task.pk,
    )


def depth_from(headers: Mapping[str, str]) -> int:
    raw = headers.get(DEPTH_HEADER.lower()) or headers.get(DEPTH_HEADER) or "0"
    return min(int(raw), 1000) if raw.isdigit() else 0
