"""Tell a task's owner how an execution ended: by e-mail, webhook or Web Push.

``execution_notify`` runs once per finished execution (a Celery task published after the
commit that finished it). It is idempotent: ``notified_at`` is claimed NULL -> now by a
conditional update before anything is sent, so a redelivered message sends nothing twice
(at most once: a worker lost mid-send does not send again). A channel that fails is noted
on the execution's logs as a warning and never changes the execution's status. Every HTTP
request (webhooks and push services alike) goes through ``executors.egress``. Logs name a
webhook or push service by its origin only: their paths and queries are often secrets.
"""

from __future__ import annotations

import json
import logging
import re
import smtplib
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import EmailMultiAlternatives, get_connection, send_mail
from django.db import transaction
from django.utils import timezone
from pydantic import ValidationError
from pywebpush import WebPushException, webpush
from requests.structures import CaseInsensitiveDict

from executors import egress
from executors.egress import EgressPolicy, EgressResponse
from executors.errors import ExecutorError
from executors.webhook import DEPTH_HEADER

from .. import vapid
from ..conf import scheduler_settings
from ..models import ExecutionStatus, PushSubscription, TaskExecution
from ..specs import Notification
from ..storable import log_entry

if TYPE_CHECKING:
    from .lateness import LateTask

logger = logging.getLogger(__name__)

EVENTS = {ExecutionStatus.COMPLETED: "completed", ExecutionStatus.FAILED: "failed"}
WEBHOOK_RESULT_CHARS = 16_000
EMAIL_RESULT_CHARS = 2_000
ERROR_CHARS = 2_000
PUSH_BODY_CHARS = 200
PUSH_TTL_SECONDS = 24 * 3600  # a push service keeps the message this long for an offline browser
GONE = frozenset({404, 410})  # the push service says the subscription no longer exists
URL_PATTERN = re.compile(r"""https?://[^\s'"<>]+""")

Logs = list[dict[str, str]]


class NotifyFailed(Exception):
    """A channel could not deliver; the message is safe to log."""


def execution_notify(*, execution_id: str | uuid.UUID) -> list[str]:
    """Send the notifications a finished execution's task asks for; the channels that
    delivered. Safe to call more than once: only the first call sends."""
    execution = _load(execution_id)
    if execution is None:
        return []
    spec = _wanted(execution)
    if spec is None or not _claim(execution):
        return []
    logs: Logs = []
    delivered: list[str] = [
        channel for channel in dict.fromkeys(spec.channels) if _send(channel, execution, spec, logs)
    ]
    _append_logs(execution, logs)
    logger.info("execution %s: notified by %s", execution.pk, ", ".join(delivered) or "nothing")
    return delivered


def _load(execution_id: str | uuid.UUID) -> TaskExecution | None:
    try:
        pk = uuid.UUID(str(execution_id))
    except ValueError:
        return None
    return TaskExecution.objects.select_related("task__owner").filter(pk=pk).first()


def _wanted(execution: TaskExecution) -> Notification | None:
    """The task's notification settings, when they ask to hear about this outcome."""
    if execution.status not in EVENTS:
        return None
    try:
        spec = Notification.model_validate(execution.task.notification or {})
    except ValidationError:
        logger.warning("task %s has invalid notification settings", execution.task_id)
        return None
    wanted = spec.onSuccess if execution.status == ExecutionStatus.COMPLETED else spec.onFailure
    return spec if wanted and spec.channels else None


def _claim(execution: TaskExecution) -> bool:
    """True for exactly one caller per finished execution."""
    return bool(
        TaskExecution.objects.filter(
            pk=execution.pk, status=execution.status, notified_at__isnull=True
        ).update(notified_at=timezone.now())
    )


def _append_logs(execution: TaskExecution, logs: Logs) -> None:
    if not logs:
        return
    with transaction.atomic():
        current = TaskExecution.objects.select_for_update().filter(pk=execution.pk).first()
        if current is None:
            return
        current.logs = [*(current.logs or []), *logs]
        current.save(update_fields=["logs"])


def _send(channel: str, execution: TaskExecution, spec: Notification, logs: Logs) -> bool:
    """One channel; whatever goes wrong is logged on the execution, never raised."""
    try:
        return SENDERS[channel](execution, spec, logs)
    except (NotifyFailed, ImproperlyConfigured, ExecutorError) as exc:
        reason = scrub(str(exc))
    except Exception as exc:  # noqa: BLE001 - a notification must never fail the caller
        logger.warning("execution %s: %s notification failed", execution.pk, channel, exc_info=True)
        reason = type(exc).__name__
    logs.append(log_entry(f"{channel} notification failed: {reason}", "warning"))
    return False


# --- e-mail ----------------------------------------------------------------------------


def _send_email(execution: TaskExecution, spec: Notification, logs: Logs) -> bool:
    owner_address = execution.task.owner.email
    recipients = [str(a) for a in spec.email or []] or ([owner_address] if owner_address else [])
    if not recipients:
        raise NotifyFailed(
            "no address to send to (notification.email is empty and the task's owner has "
            "no e-mail address)"
        )
    message = EmailMultiAlternatives(
        subject=email_subject(execution),
        body=email_body(execution),
        to=recipients,
        headers={"Message-ID": f"<notify-{execution.pk}@scheduler.local>"},
        connection=get_connection(timeout=_policy().timeout),
    )
    try:
        message.send(fail_silently=False)
    except smtplib.SMTPRecipientsRefused:
        raise NotifyFailed("the mail server refused every recipient") from None
    except smtplib.SMTPResponseException as exc:
        error = exc.smtp_error
        text = error.decode(errors="replace") if isinstance(error, bytes) else str(error)
        raise NotifyFailed(f"the mail server answered {exc.smtp_code}: {text}") from None
    except (smtplib.SMTPException, OSError) as exc:
        raise NotifyFailed(f"could not send the e-mail ({type(exc).__name__}: {exc})") from None
    logs.append(log_entry(f"notified by email to {', '.join(recipients)}"))
    return True


def email_subject(execution: TaskExecution) -> str:
    name = " ".join(execution.task.name.split())  # one line, whatever the name holds
    return f"[scheduler] {name} {EVENTS[ExecutionStatus(execution.status)]}"


def email_body(execution: TaskExecution) -> str:
    result, truncated = excerpt(execution.result, EMAIL_RESULT_CHARS)
    lines = [
        f"Task: {execution.task.name}",
        f"Status: {execution.status}",
        f"Trigger: {execution.trigger}",
        f"Scheduled for: {iso(execution.scheduled_for) or '-'}",
        f"Started: {iso(execution.started_at) or '-'}",
        f"Completed: {iso(execution.completed_at) or '-'}",
        f"Duration: {duration(execution.duration_ms) or '-'}",
        f"Attempt: {execution.attempt}",
    ]
    if execution.error:
        lines.append(f"Error: {cap(execution.error, ERROR_CHARS)}")
    if execution.result is not None:
        shown = result if isinstance(result, str) and truncated else _dumps(result)
        lines += ["", "Result" + (" (excerpt)" if truncated else "") + ":", shown]
    lines += ["", f"Execution: {execution_link(execution)}"]
    return "\n".join(lines) + "\n"


# --- webhook ---------------------------------------------------------------------------


def _send_webhook(execution: TaskExecution, spec: Notification, logs: Logs) -> bool:
    url = spec.webhookUrl or ""
    response = egress.request(
        "POST",
        url,
        _policy(),
        json=webhook_payload(execution),
        headers={
            "Idempotency-Key": f"notify-{execution.pk}",
            DEPTH_HEADER: str(execution.trigger_depth + 1),
        },
    )
    if not 200 <= response.status < 300:
        raise NotifyFailed(f"{origin(url)} answered HTTP {response.status}")
    logs.append(log_entry(f"notified by webhook to {origin(url)} (HTTP {response.status})"))
    return True


def webhook_payload(execution: TaskExecution) -> dict[str, Any]:
    result, truncated = excerpt(execution.result, WEBHOOK_RESULT_CHARS)
    return {
        "event": f"execution.{EVENTS[ExecutionStatus(execution.status)]}",
        "task": {"id": str(execution.task_id), "name": execution.task.name},
        "execution": {
            "id": str(execution.pk),
            "status": execution.status,
            "trigger": execution.trigger,
            "scheduledFor": iso(execution.scheduled_for),
            "startedAt": iso(execution.started_at),
            "completedAt": iso(execution.completed_at),
            "durationMs": execution.duration_ms,
            "attempt": execution.attempt,
            "error": cap(execution.error, ERROR_CHARS) or None,
            "result": result,
            "resultTruncated": truncated,
            "url": execution_link(execution),
        },
    }


# --- Web Push --------------------------------------------------------------------------


def _send_push(execution: TaskExecution, spec: Notification, logs: Logs) -> bool:
    subscriptions = list(PushSubscription.objects.filter(owner_id=execution.task.owner_id))
    if not subscriptions:
        raise NotifyFailed("the task's owner has no push subscriptions")
    data = json.dumps(push_payload(execution), ensure_ascii=False)
    key = vapid.vapid()
    delivered = sum(_push_one(subscription, data, key, logs) for subscription in subscriptions)
    if not delivered:
        return False
    logs.append(log_entry(f"notified by push to {delivered} of {len(subscriptions)} browser(s)"))
    return True


def _push_one(subscription: PushSubscription, data: str, key: Any, logs: Logs) -> bool:
    service = origin(subscription.endpoint)
    policy = _policy()
    try:
        webpush(
            {
                "endpoint": subscription.endpoint,
                "keys": {"p256dh": subscription.p256dh, "auth": subscription.auth},
            },
            data=data,
            vapid_private_key=key,
            vapid_claims={"sub": vapid.subject()},  # a fresh dict: webpush adds aud and exp
            ttl=PUSH_TTL_SECONDS,
            timeout=policy.timeout,
            requests_session=cast(requests.Session, EgressSession(policy)),
        )
    except WebPushException as exc:
        status = exc.status_code
        if status in GONE:
            PushSubscription.objects.filter(pk=subscription.pk).delete()
            reason = f"{service} answered HTTP {status}: the subscription is gone and was removed"
        else:
            reason = f"{service} answered HTTP {status}"
    except ExecutorError as exc:  # refused by the egress policy, unreachable, timed out
        reason = scrub(str(exc))
    except Exception as exc:  # noqa: BLE001 - e.g. keys a browser never made; try the others
        reason = f"{service}: {type(exc).__name__}"
    else:
        return True
    logs.append(log_entry(f"push notification failed: {reason}", "warning"))
    return False


def push_payload(execution: TaskExecution) -> dict[str, Any]:
    event = EVENTS[ExecutionStatus(execution.status)]
    if execution.status == ExecutionStatus.FAILED:
        body = cap(" ".join((execution.error or "failed").split()), PUSH_BODY_CHARS)
    else:
        took = duration(execution.duration_ms)
        body = f"completed in {took}" if took else "completed"
    return {
        "title": cap(f"{execution.task.name} {event}", PUSH_BODY_CHARS),
        "body": body,
        "url": execution_link(execution),
        "executionId": str(execution.pk),
        "taskId": str(execution.task_id),
        "status": execution.status,
    }


class EgressSession:
    """The part of a requests session pywebpush uses (``post``), sent through the egress
    module: the endpoint's addresses are checked (and re-checked at connect time), each
    redirect is checked, the answer is size- and time-capped. pywebpush posts a push
    service's endpoint with the encrypted body and its VAPID headers."""

    def __init__(self, policy: EgressPolicy) -> None:
        self.policy = policy

    def post(
        self,
        url: str,
        *,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> requests.Response:
        answer = egress.request(
            "POST", url, self.policy, data=data, headers=dict(headers or {}), timeout=timeout
        )
        return as_requests_response(answer)


def as_requests_response(answer: EgressResponse) -> requests.Response:
    response = requests.Response()
    response.status_code = answer.status
    response.headers = CaseInsensitiveDict(answer.headers)
    response._content = answer.content
    response.url = answer.url
    response.encoding = "utf-8"
    try:
        response.reason = HTTPStatus(answer.status).phrase
    except ValueError:
        response.reason = ""
    return response


SENDERS: dict[str, Callable[[TaskExecution, Notification, Logs], bool]] = {
    "email": _send_email,
    "webhook": _send_webhook,
    "push": _send_push,
}


# --- shared ----------------------------------------------------------------------------


def _policy() -> EgressPolicy:
    return scheduler_settings().egress_policy()


def execution_link(execution: TaskExecution) -> str:
    """The execution's API path, absolute when SCHEDULER_PUBLIC_URL is set."""
    base = str(getattr(settings, "SCHEDULER_PUBLIC_URL", "") or "").rstrip("/")
    return f"{base}/api/executions/{execution.pk}"


def iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


def duration(ms: int | None) -> str:
    return f"{ms / 1000:.3f} s" if ms is not None else ""


def cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str, indent=2)


def excerpt(result: Any, limit: int) -> tuple[Any, bool]:
    """The result itself when its JSON fits in ``limit`` characters; else the start of
    that JSON as a string, and True."""
    text = json.dumps(result, ensure_ascii=False, default=str)
    if len(text) <= limit:
        return result, False
    return cap(text, limit), True


def origin(url: str) -> str:
    """scheme://host[:port] of a URL: all of it that may be logged."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


def scrub(text: str) -> str:
    """A message with every URL in it cut down to its origin."""
    return URL_PATTERN.sub(lambda match: origin(match.group()), text)


# --- late tasks (dead-man's switch) ----------------------------------------------------


def task_late_notify(*, late: LateTask) -> list[str]:
    """Tell a late task's owner, once per episode (services.lateness decides when): by
    e-mail to the owner's address (and ``notification.email`` when the e-mail channel is
    on), and by the task's webhook and push channels. The channels that delivered; a
    failure is logged, never raised."""
    task = late.task
    try:
        spec = Notification.model_validate(task.notification or {})
    except ValidationError:
        logger.warning("task %s has invalid notification settings", task.pk)
        spec = Notification()
    channels = ["email", *(c for c in dict.fromkeys(spec.channels) if c != "email")]
    senders: dict[str, Callable[[LateTask, Notification, Logs], bool]] = {
        "email": _late_email,
        "webhook": _late_webhook,
        "push": _late_push,
    }
    delivered: list[str] = []
    for channel in channels:
        logs: Logs = []
        try:
            if senders[channel](late, spec, logs):
                delivered.append(channel)
        except (NotifyFailed, ImproperlyConfigured, ExecutorError) as exc:
            logs.append(log_entry(f"{channel} late notice failed: {scrub(str(exc))}", "warning"))
        except Exception:  # noqa: BLE001 - a notice must never fail the check
            logger.warning("task %s: %s late notice failed", task.pk, channel, exc_info=True)
        for entry in logs:
            level = logging.WARNING if entry.get("level") == "warning" else logging.INFO
            logger.log(level, "task %s: %s", task.pk, entry.get("message"))
    return delivered


def late_subject(late: LateTask) -> str:
    name = " ".join(late.task.name.split())
    return f"[scheduler] {name} is late"


def late_body(late: LateTask) -> str:
    task = late.task
    return (
        f"Task: {task.name}\n"
        f"Schedule: {task.cron} ({task.timezone})\n"
        f"Occurrence: {iso(late.occurrence)}\n"
        f"Not started {late.late_by_seconds} s after its time.\n"
        "\n"
        "The scheduler (celery beat) or the workers may be down. You hear about this once;\n"
        "once the task runs again, a later delay is a new notice.\n"
        "\n"
        f"Task: {task_link(late)}\n"
    )


def task_link(late: LateTask) -> str:
    base = str(getattr(settings, "SCHEDULER_PUBLIC_URL", "") or "").rstrip("/")
    return f"{base}/api/tasks/{late.task.pk}"


def late_payload(late: LateTask) -> dict[str, Any]:
    return {
        "event": "task.late",
        "task": {"id": str(late.task.pk), "name": late.task.name},
        "occurrence": iso(late.occurrence),
        "lateBySeconds": late.late_by_seconds,
        "url": task_link(late),
    }


def _late_email(late: LateTask, spec: Notification, logs: Logs) -> bool:
    owner_address = late.task.owner.email
    extra = [str(a) for a in spec.email or []] if "email" in spec.channels else []
    recipients = list(dict.fromkeys([*([owner_address] if owner_address else []), *extra]))
    if not recipients:
        logs.append(log_entry("no e-mail address for the late notice", "warning"))
        return False
    try:
        send_mail(
            late_subject(late),
            late_body(late),
            None,
            recipients,
            fail_silently=False,
            connection=get_connection(timeout=_policy().timeout),
        )
    except (smtplib.SMTPException, OSError) as exc:
        raise NotifyFailed(f"could not send the e-mail ({type(exc).__name__}: {exc})") from None
    logs.append(log_entry(f"late notice by email to {', '.join(recipients)}"))
    return True


def _late_webhook(late: LateTask, spec: Notification, logs: Logs) -> bool:
    url = spec.webhookUrl or ""
    response = egress.request(
        "POST",
        url,
        _policy(),
        json=late_payload(late),
        headers={"Idempotency-Key": f"late-{late.task.pk}-{iso(late.occurrence)}"},
    )
    if not 200 <= response.status < 300:
        raise NotifyFailed(f"{origin(url)} answered HTTP {response.status}")
    logs.append(log_entry(f"late notice by webhook to {origin(url)} (HTTP {response.status})"))
    return True


def _late_push(late: LateTask, spec: Notification, logs: Logs) -> bool:
    subscriptions = list(PushSubscription.objects.filter(owner_id=late.task.owner_id))
    if not subscriptions:
        raise NotifyFailed("the task's owner has no push subscriptions")
    payload = {
        "title": cap(f"{late.task.name} is late", PUSH_BODY_CHARS),
        "body": f"its run of {iso(late.occurrence)} has not started",
        "url": task_link(late),
        "taskId": str(late.task.pk),
        "status": "late",
    }
    data = json.dumps(payload, ensure_ascii=False)
    key = vapid.vapid()
    delivered = sum(_push_one(subscription, data, key, logs) for subscription in subscriptions)
    if delivered:
        logs.append(log_entry(f"late notice by push to {delivered} browser(s)"))
    return bool(delivered)
