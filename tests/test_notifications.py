"""Notifications of finished executions, delivered to real servers on loopback: an aiosmtpd
inbox, an HTTP receiver for webhooks, and the same receiver playing a Web Push service
(the test decrypts what it received with the browser's keys and checks the VAPID JWT).
Also the VAPID key store and the /api/push endpoints."""

from __future__ import annotations

import base64
import json
import os
import stat
from datetime import datetime, timedelta
from email.message import Message
from typing import Any

import http_ece
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.utils import timezone
from py_vapid.jwt import decode as decode_jwt
from rest_framework.test import APIClient

from tasks_app import vapid
from tasks_app.models import (
    ExecutionStatus,
    ExecutionTrigger,
    PushSubscription,
    ScheduledTask,
    TaskExecution,
)
from tasks_app.services.definitions import task_create
from tasks_app.services.executions import log_entry
from tasks_app.services.notifications import execution_notify
from tests.api_clients import forced_client
from tests.broker import published_headers
from tests.http_receiver import Receiver, Reply
from tests.smtp_inbox import Inbox, smtp_fixture  # noqa: F401 - the smtp fixture

pytestmark = pytest.mark.django_db


ERROR = "POST https://api.example.com/x answered 503: upstream down"


@pytest.fixture
def owner(django_user_model: Any) -> Any:
    return django_user_model.objects.create(username="alice", email="alice@example.com")


@pytest.fixture
def vapid_dir(settings: Any, tmp_path: Any) -> Any:
    """A fresh data dir, so the VAPID key is made for this test."""
    settings.DATA_DIR = tmp_path
    settings.SCHEDULER_VAPID_PRIVATE_KEY = ""
    settings.SCHEDULER_VAPID_SUBJECT = "mailto:ops@example.org"
    return tmp_path


def make_task(owner: Any, notification: dict[str, Any]) -> ScheduledTask:
    return task_create(
        owner=owner,
        name="Daily Report",
        type="recurring",
        cron="0 9 * * *",
        action={"type": "webhook", "url": "https://api.example.com/x"},
        notification=notification,
    )


def finished(
    owner: Any,
    notification: dict[str, Any],
    *,
    status: str = ExecutionStatus.FAILED,
    result: Any = None,
) -> TaskExecution:
    now = timezone.now()
    return TaskExecution.objects.create(
        task=make_task(owner, notification),
        status=status,
        trigger=ExecutionTrigger.MANUAL,
        started_at=now - timedelta(seconds=2),
        completed_at=now,
        duration_ms=2000,
        attempt=2,
        error=ERROR if status == ExecutionStatus.FAILED else "",
        result=result,
        logs=[log_entry("attempt 2 started on test")],
    )


def on_failure(*channels: str, **extra: Any) -> dict[str, Any]:
    return {"onFailure": True, "channels": list(channels), **extra}


def text_of(message: Message) -> str:
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


def stamp(value: datetime | None) -> str:
    assert value is not None
    return value.isoformat()


def warnings(execution: TaskExecution) -> list[str]:
    execution.refresh_from_db()
    return [e["message"] for e in execution.logs if e["level"] == "warning"]


def infos(execution: TaskExecution) -> list[str]:
    execution.refresh_from_db()
    return [e["message"] for e in execution.logs if e["level"] == "info"]


# --- e-mail ----------------------------------------------------------------------------


def test_failure_email_reaches_the_owner(smtp: Inbox, owner: Any, settings: Any) -> None:
    settings.SCHEDULER_PUBLIC_URL = "https://scheduler.example.org/"
    execution = finished(owner, on_failure("email"))

    assert execution_notify(execution_id=str(execution.pk)) == ["email"]

    [envelope] = smtp.envelopes
    assert envelope.rcpt_tos == ["alice@example.com"]
    message = smtp.message()
    assert message["Subject"] == "[scheduler] Daily Report failed"
    assert message["Message-ID"] == f"<notify-{execution.pk}@scheduler.local>"
    body = text_of(message)
    assert "Task: Daily Report" in body and "Status: failed" in body
    assert f"Error: {ERROR}" in body and "Attempt: 2" in body and "Duration: 2.000 s" in body
    assert stamp(execution.completed_at) in body  # UTC, as stored
    assert f"https://scheduler.example.org/api/executions/{execution.pk}" in body
    assert infos(execution)[-1] == "notified by email to alice@example.com"
    assert execution.status == ExecutionStatus.FAILED and execution.notified_at is not None


def test_success_email_to_the_listed_addresses_with_a_result_excerpt(
    smtp: Inbox, owner: Any
) -> None:
    notification = {"onSuccess": True, "channels": ["email"], "email": ["ops@example.com"]}
    result = {"rows": ["x" * 100] * 100}
    execution = finished(owner, notification, status=ExecutionStatus.COMPLETED, result=result)

    assert execution_notify(execution_id=execution.pk) == ["email"]

    message = smtp.message()
    assert smtp.envelopes[0].rcpt_tos == ["ops@example.com"]
    assert message["Subject"] == "[scheduler] Daily Report completed"
    body = text_of(message)
    assert "Result (excerpt):" in body and '{"rows": ["xxx' in body
    assert len(body) < 3000
    assert f"Execution: /api/executions/{execution.pk}" in body.splitlines()


def test_the_notify_message_says_it_keeps_no_result(
    owner: Any, memory_broker: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from tasks_app.services.executions import _notify_after_commit

    notification = {"onSuccess": True, "channels": ["email"]}
    execution = finished(owner, notification, status=ExecutionStatus.COMPLETED)
    with django_capture_on_commit_callbacks(execute=True):
        _notify_after_commit(execution, ExecutionStatus.COMPLETED)
    [headers] = published_headers(memory_broker)
    assert (headers["task"], headers["ignore_result"]) == ("tasks_app.notify_execution", True)


def test_outcomes_not_asked_for_send_nothing(smtp: Inbox, owner: Any) -> None:
    only_failures = {"onSuccess": False, "onFailure": True, "channels": ["email"]}
    completed = finished(owner, only_failures, status=ExecutionStatus.COMPLETED)
    skipped = finished(owner, {**only_failures, "onSuccess": True}, status=ExecutionStatus.SKIPPED)
    unfinished = finished(owner, only_failures, status=ExecutionStatus.RETRYING)

    for execution in (completed, skipped, unfinished):
        assert execution_notify(execution_id=execution.pk) == []
        execution.refresh_from_db()
        assert execution.notified_at is None
    assert smtp.envelopes == []
    assert execution_notify(execution_id="not-a-uuid") == []


def test_an_owner_without_address_is_logged(smtp: Inbox, django_user_model: Any) -> None:
    execution = finished(django_user_model.objects.create(username="bob"), on_failure("email"))

    assert execution_notify(execution_id=execution.pk) == []
    assert smtp.envelopes == []
    assert "email notification failed: no address to send to" in warnings(execution)[0]


def test_an_unreachable_mail_server_is_logged(settings: Any, owner: Any) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", 9
    execution = finished(owner, on_failure("email"))

    assert execution_notify(execution_id=execution.pk) == []
    [warning] = warnings(execution)
    assert warning.startswith("email notification failed: could not send the e-mail")
    assert execution.status == ExecutionStatus.FAILED and execution.error == ERROR


# --- webhook ---------------------------------------------------------------------------


def test_webhook_notification(receiver: Receiver, egress_allow_loopback: None, owner: Any) -> None:
    url = f"{receiver.url}/hooks/notify?token=s3cret"
    execution = finished(owner, on_failure("webhook", webhookUrl=url))

    assert execution_notify(execution_id=execution.pk) == ["webhook"]

    [request] = receiver.received("/hooks/notify")
    assert request.method == "POST"
    assert request.headers["Idempotency-Key"] == f"notify-{execution.pk}"
    assert request.json() == {
        "event": "execution.failed",
        "task": {"id": str(execution.task_id), "name": "Daily Report"},
        "execution": {
            "id": str(execution.pk),
            "status": "failed",
            "trigger": "manual",
            "scheduledFor": None,
            "startedAt": stamp(execution.started_at),
            "completedAt": stamp(execution.completed_at),
            "durationMs": 2000,
            "attempt": 2,
            "error": ERROR,
            "result": None,
            "resultTruncated": False,
            "url": f"/api/executions/{execution.pk}",
        },
    }
    [message] = infos(execution)[-1:]
    assert message == f"notified by webhook to {receiver.url} (HTTP 200)"


def test_webhook_result_is_capped(
    receiver: Receiver, egress_allow_loopback: None, owner: Any
) -> None:
    notification = {"onSuccess": True, "channels": ["webhook"], "webhookUrl": receiver.url + "/h"}
    execution = finished(
        owner, notification, status=ExecutionStatus.COMPLETED, result={"big": "y" * 50_000}
    )

    execution_notify(execution_id=execution.pk)

    sent = receiver.received("/h")[0].json()["execution"]
    assert sent["resultTruncated"] is True and sent["result"].startswith('{"big": "yyy')
    assert len(sent["result"]) <= 16_000


def test_a_webhook_answering_500_is_logged(
    receiver: Receiver, egress_allow_loopback: None, owner: Any
) -> None:
    receiver.reply("/hooks/secret-path", Reply(status=500))
    execution = finished(
        owner, on_failure("webhook", webhookUrl=receiver.url + "/hooks/secret-path")
    )

    assert execution_notify(execution_id=execution.pk) == []

    assert warnings(execution) == [f"webhook notification failed: {receiver.url} answered HTTP 500"]
    assert execution.status == ExecutionStatus.FAILED and execution.error == ERROR


def test_a_webhook_refused_by_egress_is_logged(receiver: Receiver, owner: Any) -> None:
    url = receiver.url + "/hooks/secret-path?token=s3cret"
    execution = finished(owner, on_failure("webhook", webhookUrl=url))

    assert execution_notify(execution_id=execution.pk) == []

    assert receiver.requests == []
    [warning] = warnings(execution)
    assert warning.startswith("webhook notification failed: refused to connect to '127.0.0.1'")
    assert "secret-path" not in warning and "s3cret" not in warning
    assert execution.status == ExecutionStatus.FAILED


def test_a_second_call_sends_nothing(
    smtp: Inbox, receiver: Receiver, egress_allow_loopback: None, owner: Any
) -> None:
    execution = finished(owner, on_failure("email", "webhook", webhookUrl=receiver.url + "/h"))

    assert execution_notify(execution_id=execution.pk) == ["email", "webhook"]
    assert execution_notify(execution_id=execution.pk) == []

    assert len(smtp.envelopes) == 1 and len(receiver.received("/h")) == 1
    assert len(infos(execution)) == 3  # the attempt, and one line per channel


# --- Web Push --------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Browser:
    """A browser's side of a push subscription: its ECDH key pair and auth secret."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)
        point = self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self.p256dh = b64url(point)

    def subscribe(self, owner: Any, endpoint: str) -> PushSubscription:
        return PushSubscription.objects.create(
            owner=owner, endpoint=endpoint, p256dh=self.p256dh, auth=b64url(self.auth)
        )

    def decrypt(self, body: bytes) -> Any:
        plain = http_ece.decrypt(
            body, private_key=self.key, auth_secret=self.auth, version="aes128gcm"
        )
        return json.loads(plain)


def test_push_is_encrypted_for_the_browser_and_signed_with_our_key(
    receiver: Receiver, egress_allow_loopback: None, owner: Any, vapid_dir: Any
) -> None:
    receiver.reply("/push/abc", Reply(status=201, body=b""))
    browser = Browser()
    browser.subscribe(owner, f"{receiver.url}/push/abc")
    execution = finished(owner, on_failure("push"))

    assert execution_notify(execution_id=execution.pk) == ["push"]

    [request] = receiver.received("/push/abc")
    headers = {name.lower(): value for name, value in request.headers.items()}
    assert headers["content-encoding"] == "aes128gcm" and int(headers["ttl"]) > 0
    assert browser.decrypt(request.body) == {
        "title": "Daily Report failed",
        "body": ERROR,
        "url": f"/api/executions/{execution.pk}",
        "executionId": str(execution.pk),
        "taskId": str(execution.task_id),
        "status": "failed",
    }
    scheme, credentials = headers["authorization"].split(" ", 1)
    parts = dict(item.split("=", 1) for item in credentials.split(","))
    assert scheme == "vapid" and parts["k"] == vapid.application_server_key()
    claims = decode_jwt(parts["t"], parts["k"])  # raises unless signed by that key
    assert claims["aud"] == receiver.url and claims["sub"] == "mailto:ops@example.org"
    assert claims["exp"] > timezone.now().timestamp()
    assert infos(execution)[-1] == "notified by push to 1 of 1 browser(s)"


def test_a_gone_subscription_is_deleted_and_the_others_still_served(
    receiver: Receiver, egress_allow_loopback: None, owner: Any, vapid_dir: Any
) -> None:
    receiver.reply("/push/gone", Reply(status=410, body=b""))
    receiver.reply("/push/live", Reply(status=201, body=b""))
    gone = Browser().subscribe(owner, f"{receiver.url}/push/gone")
    live_browser = Browser()
    live = live_browser.subscribe(owner, f"{receiver.url}/push/live")
    notification = {"onSuccess": True, "channels": ["push"]}
    execution = finished(owner, notification, status=ExecutionStatus.COMPLETED)

    assert execution_notify(execution_id=execution.pk) == ["push"]

    assert list(PushSubscription.objects.all()) == [live]
    assert not PushSubscription.objects.filter(pk=gone.pk).exists()
    payload = live_browser.decrypt(receiver.received("/push/live")[0].body)
    assert payload["body"] == "completed in 2.000 s" and payload["status"] == "completed"
    [warning] = warnings(execution)
    assert warning == (
        f"push notification failed: {receiver.url} answered HTTP 410: the subscription is gone "
        "and was removed"
    )
    assert infos(execution)[-1] == "notified by push to 1 of 2 browser(s)"


def test_a_push_service_refused_by_egress_is_logged(
    receiver: Receiver, owner: Any, vapid_dir: Any
) -> None:
    Browser().subscribe(owner, f"{receiver.url}/push/capability-token")
    execution = finished(owner, on_failure("push"))

    assert execution_notify(execution_id=execution.pk) == []

    assert receiver.requests == [] and PushSubscription.objects.count() == 1
    [warning] = warnings(execution)
    assert warning.startswith("push notification failed: refused to connect to '127.0.0.1'")
    assert "capability-token" not in warning


def test_push_without_subscriptions_is_logged(owner: Any, vapid_dir: Any) -> None:
    execution = finished(owner, on_failure("push"))
    assert execution_notify(execution_id=execution.pk) == []
    assert warnings(execution) == [
        "push notification failed: the task's owner has no push subscriptions"
    ]


# --- VAPID keys ------------------------------------------------------------------------


def test_a_vapid_key_is_made_once_and_kept_private(vapid_dir: Any) -> None:
    first = vapid.application_server_key()
    key_file = vapid_dir / "vapid_private.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert vapid.application_server_key() == first
    point = base64.urlsafe_b64decode(first + "=")
    assert len(point) == 65 and point[0] == 4
    assert [p.name for p in vapid_dir.iterdir()] == ["vapid_private.pem"]  # no temp left


def test_the_configured_vapid_key_wins(vapid_dir: Any, settings: Any) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    settings.SCHEDULER_VAPID_PRIVATE_KEY = pem.replace("\n", "\\n")  # as one env line
    assert vapid.application_server_key() == b64url(point)
    assert not (vapid_dir / "vapid_private.pem").exists()


# --- /api/push -------------------------------------------------------------------------


def subscription_json(endpoint: str = "https://push.example.net/send/abc") -> dict[str, Any]:
    browser = Browser()
    return {"endpoint": endpoint, "keys": {"p256dh": browser.p256dh, "auth": b64url(browser.auth)}}


def test_api_key_and_subscriptions(owner: Any, django_user_model: Any, vapid_dir: Any) -> None:
    alice = forced_client(owner)
    bob = forced_client(django_user_model.objects.create(username="bob"))

    assert alice.get("/api/push/key").json() == {"publicKey": vapid.application_server_key()}

    body = subscription_json()
    created = alice.post("/api/push/subscriptions", body, format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["endpoint"] == body["endpoint"]
    renewed = {**body, "keys": subscription_json()["keys"]}
    again = alice.post("/api/push/subscriptions", renewed, format="json")
    assert again.status_code == 200 and again.json()["id"] == created.json()["id"]
    stored = PushSubscription.objects.get()
    assert (stored.owner, stored.p256dh) == (owner, renewed["keys"]["p256dh"])

    listed = alice.get("/api/push/subscriptions").json()
    assert [s["id"] for s in listed] == [created.json()["id"]]
    assert bob.get("/api/push/subscriptions").json() == []

    target = f"/api/push/subscriptions/{stored.pk}"
    assert bob.delete(target).status_code == 404
    assert PushSubscription.objects.count() == 1
    assert alice.delete(target).status_code == 204
    assert PushSubscription.objects.count() == 0
    assert APIClient().get("/api/push/subscriptions").status_code in {401, 403}


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"endpoint": "ftp://push.example.net/x"}, "endpoint"),
        ({"endpoint": "not a url"}, "endpoint"),
        ({"endpoint": None}, "endpoint"),
        ({"keys": {"auth": b64url(os.urandom(16))}}, "keys.p256dh"),
        ({"keys": {"p256dh": b64url(b"\x04" + b"\x01" * 64), "auth": "x"}}, "keys.p256dh"),
        ({"keys": {"p256dh": "!!!", "auth": b64url(os.urandom(16))}}, "keys.p256dh"),
        ({"keys": {"p256dh": Browser().p256dh, "auth": b64url(os.urandom(8))}}, "keys.auth"),
        ({"keys": "nope"}, "keys"),
    ],
)
def test_api_rejects_bad_subscriptions(owner: Any, change: dict[str, Any], path: str) -> None:
    response = forced_client(owner).post(
        "/api/push/subscriptions", {**subscription_json(), **change}, format="json"
    )
    assert response.status_code == 400 and path in response.json()
    assert PushSubscription.objects.count() == 0
