"""Inbound webhooks (secret, header, Standard Webhooks signatures, replays, rotation,
revocation, caps), custom and system events, and loop protection."""

from __future__ import annotations

import importlib
import json
import logging
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from tasks_app.api.webhooks import PerWebhookThrottle
from tasks_app.models import ExecutionStatus, ScheduledTask, TaskExecution, TaskWebhook
from tasks_app.services import dispatch, executions, triggers
from tasks_app.services.definitions import task_create
from tasks_app.services.executions import _finish
from tests.api_clients import forced_client, token_client

pytestmark = pytest.mark.django_db

ORDER = {"data": "your webhook payload", "order": {"id": 42}}


@pytest.fixture
def api(django_user_model: Any) -> APIClient:
    user = django_user_model.objects.create(username="user-123")
    client = token_client(user)
    client.user = user  # type: ignore[attr-defined]
    return client


def trigger_task(api: APIClient, trigger: dict[str, Any] | None = None) -> dict[str, Any]:
    created = api.post(
        "/api/tasks",
        {
            "userId": "user-123",
            "name": "Process Order",
            "type": "trigger",
            "trigger": trigger or {"type": "webhook", "config": {}},
            "action": {
                "type": "ai-prompt",
                "prompt": "Process this order and generate confirmation email: {webhook_payload}",
            },
        },
        format="json",
    )
    assert created.status_code == 201, created.json()
    return created.json()


def make_hook(api: APIClient, **body: Any) -> dict[str, Any]:
    task = trigger_task(api)
    hook = api.post(f"/api/tasks/{task['id']}/webhook", body or None, format="json")
    assert hook.status_code == 201, hook.json()
    return {**hook.json(), "taskId": task["id"]}


def path_of(hook: dict[str, Any]) -> str:
    return f"/api/webhooks/{hook['webhookId']}"


def signed_headers(
    secret: str, body: bytes, *, delivery: str | None = None, at: int | None = None
) -> dict[str, str]:
    delivery = delivery or f"msg_{uuid.uuid4().hex}"
    stamp = str(at if at is not None else int(time.time()))
    return {
        "HTTP_WEBHOOK_ID": delivery,
        "HTTP_WEBHOOK_TIMESTAMP": stamp,
        "HTTP_WEBHOOK_SIGNATURE": triggers.sign(secret, delivery, stamp, body),
    }


def executions_of(task_id: str) -> list[TaskExecution]:
    return list(TaskExecution.objects.filter(task_id=task_id).order_by("queued_at"))


def test_the_guides_example_three(api: APIClient, django_capture_on_commit_callbacks: Any) -> None:
    hook = make_hook(api)
    assert hook["webhookUrl"] == f"http://testserver{path_of(hook)}"
    assert hook["secret"].startswith("whsec_")
    with django_capture_on_commit_callbacks() as published:
        answer = APIClient().post(f"{path_of(hook)}?secret={hook['secret']}", ORDER, format="json")
    assert answer.status_code == 202, answer.json()
    [execution] = executions_of(hook["taskId"])
    assert answer.json() == {"executionId": str(execution.pk)}
    assert (execution.trigger, execution.payload, execution.status) == ("webhook", ORDER, "queued")
    assert len(published) == 1


def test_secret_in_a_header(api: APIClient) -> None:
    hook = make_hook(api)
    answer = APIClient().post(
        path_of(hook), ORDER, format="json", HTTP_X_WEBHOOK_SECRET=hook["secret"]
    )
    assert answer.status_code == 202


@pytest.mark.parametrize("how", ["missing", "wrong query", "wrong header", "someone else's"])
def test_wrong_or_missing_secret_is_401_and_starts_nothing(api: APIClient, how: str) -> None:
    hook = make_hook(api)
    other = make_hook(api)
    client = APIClient()
    if how == "missing":
        answer = client.post(path_of(hook), ORDER, format="json")
    elif how == "wrong query":
        answer = client.post(f"{path_of(hook)}?secret={hook['secret']}x", ORDER, format="json")
    elif how == "wrong header":
        answer = client.post(path_of(hook), ORDER, format="json", HTTP_X_WEBHOOK_SECRET="nope")
    else:
        answer = client.post(f"{path_of(hook)}?secret={other['secret']}", ORDER, format="json")
    assert answer.status_code == 401
    assert executions_of(hook["taskId"]) == []


def test_unknown_or_revoked_webhook_is_404(api: APIClient) -> None:
    hook = make_hook(api)
    assert APIClient().post("/api/webhooks/nope?secret=x", ORDER, format="json").status_code == 404
    revoked = api.delete(f"/api/tasks/{hook['taskId']}/webhooks/{hook['webhookId']}")
    assert revoked.status_code == 204
    answer = APIClient().post(f"{path_of(hook)}?secret={hook['secret']}", ORDER, format="json")
    assert answer.status_code == 404 and executions_of(hook["taskId"]) == []


def test_standard_webhooks_signature(api: APIClient) -> None:
    hook = make_hook(api)
    body = json.dumps(ORDER).encode()
    answer = APIClient().post(
        path_of(hook), body, content_type="application/json", **signed_headers(hook["secret"], body)
    )
    assert answer.status_code == 202, answer.json()
    assert executions_of(hook["taskId"])[0].payload == ORDER


@pytest.mark.parametrize(
    "fault", ["wrong signature", "old timestamp", "future timestamp", "body changed", "no id"]
)
def test_bad_signatures_are_401(api: APIClient, fault: str) -> None:
    hook = make_hook(api)
    body = json.dumps(ORDER).encode()
    headers = signed_headers(hook["secret"], body)
    if fault == "wrong signature":
        headers = signed_headers("whsec_" + "A" * 32, body)
    elif fault == "old timestamp":
        headers = signed_headers(hook["secret"], body, at=int(time.time()) - 360)
    elif fault == "future timestamp":
        headers = signed_headers(hook["secret"], body, at=int(time.time()) + 360)
    elif fault == "body changed":
        body = json.dumps({**ORDER, "amount": 1_000_000}).encode()
    else:
        headers.pop("HTTP_WEBHOOK_ID")
    answer = APIClient().post(path_of(hook), body, content_type="application/json", **headers)
    assert answer.status_code == 401, answer.json()
    assert executions_of(hook["taskId"]) == []


def test_a_replayed_webhook_id_starts_one_execution(api: APIClient) -> None:
    hook = make_hook(api)
    body = json.dumps(ORDER).encode()
    headers = signed_headers(hook["secret"], body, delivery="msg_same")
    first = APIClient().post(path_of(hook), body, content_type="application/json", **headers)
    again = APIClient().post(path_of(hook), body, content_type="application/json", **headers)
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    assert len(executions_of(hook["taskId"])) == 1


def test_require_signature_refuses_a_bare_secret(api: APIClient) -> None:
    hook = make_hook(api, requireSignature=True)
    assert hook["requireSignature"] is True
    bare = APIClient().post(f"{path_of(hook)}?secret={hook['secret']}", ORDER, format="json")
    assert bare.status_code == 401
    body = json.dumps(ORDER).encode()
    signed = APIClient().post(
        path_of(hook), body, content_type="application/json", **signed_headers(hook["secret"], body)
    )
    assert signed.status_code == 202


def test_rotation_keeps_the_old_secret_valid_for_the_grace_period(api: APIClient) -> None:
    hook = make_hook(api)
    base = f"/api/tasks/{hook['taskId']}/webhooks/{hook['webhookId']}"
    rotated = api.post(f"{base}/rotate", {"graceSeconds": 3600}, format="json")
    assert rotated.status_code == 200, rotated.json()
    new = rotated.json()["secret"]
    assert new != hook["secret"] and rotated.json()["previousSecretExpiresAt"]
    for secret in (hook["secret"], new):
        answer = APIClient().post(f"{path_of(hook)}?secret={secret}", ORDER, format="json")
        assert answer.status_code == 202
    TaskWebhook.objects.filter(webhook_id=hook["webhookId"]).update(
        previous_secret_expires_at=timezone.now() - timedelta(seconds=1)
    )
    old = APIClient().post(f"{path_of(hook)}?secret={hook['secret']}", ORDER, format="json")
    assert old.status_code == 401
    listed = api.get(f"/api/tasks/{hook['taskId']}/webhooks").json()
    assert [h["webhookId"] for h in listed] == [hook["webhookId"]]
    assert "secret" not in json.dumps(listed).replace("previousSecretExpiresAt", "")


def test_webhook_management_is_per_user(api: APIClient, django_user_model: Any) -> None:
    hook = make_hook(api)
    mallory = django_user_model.objects.create(username="mallory")
    other = forced_client(mallory)
    base = f"/api/tasks/{hook['taskId']}/webhooks"
    assert other.get(base).status_code == 404
    assert other.post(f"{base}/{hook['webhookId']}/rotate").status_code == 404
    assert other.delete(f"{base}/{hook['webhookId']}").status_code == 404
    assert other.post(f"/api/tasks/{hook['taskId']}/webhook").status_code == 404


def test_secrets_are_encrypted_at_rest(api: APIClient) -> None:
    hook = make_hook(api)
    with connection.cursor() as cursor:
        cursor.execute("SELECT secret FROM task_webhooks")
        [(stored,)] = cursor.fetchall()
    assert hook["secret"] not in stored and stored.startswith("gAAAA")
    assert TaskWebhook.objects.get().secret == hook["secret"]


def test_form_and_text_payloads(api: APIClient) -> None:
    hook = make_hook(api)
    url = f"{path_of(hook)}?secret={hook['secret']}"
    form = APIClient().post(url, "a=1&b=2&b=3", content_type="application/x-www-form-urlencoded")
    text = APIClient().post(url, "plain words", content_type="text/plain")
    assert form.status_code == text.status_code == 202
    payloads = [e.payload for e in executions_of(hook["taskId"])]
    assert payloads == [{"a": "1", "b": ["2", "3"]}, "plain words"]


@pytest.mark.parametrize(
    "body, content_type, field",
    [
        (b'{"a": ', "application/json", "(body)"),
        (b'{"a": "x\\u0000y"}', "application/json", "payload.a"),
        (b"\xff\xfe", "text/plain", "(body)"),
    ],
)
def test_bad_bodies_are_400(api: APIClient, body: bytes, content_type: str, field: str) -> None:
    hook = make_hook(api)
    answer = APIClient().post(
        f"{path_of(hook)}?secret={hook['secret']}", body, content_type=content_type
    )
    assert answer.status_code == 400 and field in answer.json()
    assert executions_of(hook["taskId"]) == []


def test_oversized_body_is_413(api: APIClient, settings: Any) -> None:
    settings.SCHEDULER_WEBHOOK_MAX_BYTES = 1000
    hook = make_hook(api)
    answer = APIClient().post(
        f"{path_of(hook)}?secret={hook['secret']}", {"x": "y" * 2000}, format="json"
    )
    assert answer.status_code == 413 and executions_of(hook["taskId"]) == []


def test_inbound_requests_are_throttled_per_webhook(
    api: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(PerWebhookThrottle, "THROTTLE_RATES", {"webhook": "2/min"})
    hook, other = make_hook(api), make_hook(api)
    codes = [
        APIClient()
        .post(f"{path_of(hook)}?secret={hook['secret']}", ORDER, format="json")
        .status_code
        for _ in range(3)
    ]
    assert codes == [202, 202, 429]
    fresh = APIClient().post(f"{path_of(other)}?secret={other['secret']}", ORDER, format="json")
    assert fresh.status_code == 202


def test_the_secret_never_reaches_the_access_log(api: APIClient) -> None:
    from scheduler_project.logfilters import RedactSecrets

    record = logging.LogRecord(
        "django.server",
        logging.INFO,
        __file__,
        1,
        '"%s" %s %s',
        ("POST /api/webhooks/abc?secret=whsec_TOPSECRET&x=1 HTTP/1.1", "202", "40"),
        None,
    )
    RedactSecrets().filter(record)
    line = record.getMessage()
    assert "TOPSECRET" not in line and "secret=[redacted]&x=1" in line
    server = logging.getLogger("django.server")
    assert any(isinstance(f, RedactSecrets) for h in server.handlers for f in h.filters), (
        "runserver's access log must redact secrets"
    )


def test_a_paused_task_starts_nothing(api: APIClient) -> None:
    hook = make_hook(api)
    api.post(f"/api/tasks/{hook['taskId']}/pause")
    answer = APIClient().post(f"{path_of(hook)}?secret={hook['secret']}", ORDER, format="json")
    assert answer.status_code == 409 and executions_of(hook["taskId"]) == []


# --- events -------------------------------------------------------------------------------


def event_task(api: APIClient, event: str, **config: Any) -> dict[str, Any]:
    return trigger_task(api, {"type": "event", "config": {"event": event, **config}})


def test_custom_event_runs_every_matching_task_of_the_caller(
    api: APIClient, django_user_model: Any
) -> None:
    first, second = event_task(api, "order.created"), event_task(api, "order.created")
    unrelated = event_task(api, "order.deleted")
    mallory = django_user_model.objects.create(username="mallory")
    theirs = task_create(
        owner=mallory,
        name="theirs",
        type="trigger",
        trigger={"type": "event", "config": {"event": "order.created"}},
        action={"type": "webhook", "url": "https://example.com/x"},
    )
    answer = api.post(
        "/api/events", {"event": "order.created", "payload": {"id": 7}}, format="json"
    )
    assert answer.status_code == 202, answer.json()
    started = TaskExecution.objects.filter(pk__in=answer.json()["executionIds"])
    assert {str(e.task_id) for e in started} == {first["id"], second["id"]}
    assert all(e.trigger == "event" and e.payload == {"id": 7} for e in started)
    assert not TaskExecution.objects.filter(task_id__in=[unrelated["id"], theirs.pk]).exists()


def test_listeners_follow_edits_of_their_trigger(api: APIClient) -> None:
    """The event a task listens to is kept beside its trigger (indexed), whoever changes
    the trigger: the API, a plain save with update_fields, a change of type."""
    task = event_task(api, "order.created")

    def listeners(event: str) -> list[str]:
        emitted = api.post("/api/events", {"event": event}, format="json")
        assert emitted.status_code == 202, emitted.json()
        return [
            str(e.task_id)
            for e in TaskExecution.objects.filter(pk__in=emitted.json()["executionIds"])
        ]

    assert listeners("order.created") == [task["id"]]
    edited = api.patch(
        f"/api/tasks/{task['id']}",
        {"trigger": {"type": "event", "config": {"event": "order.paid"}}},
        format="json",
    )
    assert edited.status_code == 200, edited.json()
    assert listeners("order.created") == []
    assert listeners("order.paid") == [task["id"]]
    row = ScheduledTask.objects.get(pk=task["id"])
    row.trigger = {"type": "event", "config": {"event": "order.shipped"}}
    row.save(update_fields=["trigger"])
    assert listeners("order.paid") == [] and listeners("order.shipped") == [task["id"]]
    row.trigger = {"type": "webhook", "config": {}}
    row.save(update_fields=["trigger"])
    assert ScheduledTask.objects.get(pk=task["id"]).listens_for == ""
    assert listeners("order.shipped") == []


def test_the_migration_fills_in_what_existing_tasks_listen_to(api: APIClient) -> None:
    from django.apps import apps

    migration = importlib.import_module("tasks_app.migrations.0011_listens_for")
    listener, hook = event_task(api, "order.created"), trigger_task(api)
    ScheduledTask.objects.update(listens_for="")  # as rows were before the column
    migration.fill(apps, None)
    stored = dict(ScheduledTask.objects.values_list("id", "listens_for"))
    assert {str(pk): event for pk, event in stored.items()} == {
        listener["id"]: "order.created",
        hook["id"]: "",
    }


@pytest.mark.parametrize(
    "body, field",
    [
        ({"payload": {}}, "event"),
        ({"event": "has space"}, "event"),
        ({"event": "task.failed"}, "event"),
        ({"event": "x", "extra": 1}, "extra"),
        ({"event": "x", "payload": {"a": float("nan")}}, "detail"),
        ({"event": "x", "payload": {"a": "nul\u0000"}}, "payload.a"),
    ],
)
def test_bad_events_are_400(api: APIClient, body: dict[str, Any], field: str) -> None:
    raw = json.dumps(body)
    answer = api.post("/api/events", raw, content_type="application/json")
    assert answer.status_code == 400 and field in answer.json(), answer.json()


def test_event_trigger_needs_an_event_name(api: APIClient) -> None:
    answer = api.post(
        "/api/tasks",
        {
            "name": "x",
            "type": "trigger",
            "trigger": {"type": "event", "config": {}},
            "action": {"type": "webhook", "url": "https://example.com/x"},
        },
        format="json",
    )
    assert answer.status_code == 400 and "trigger.config.event" in answer.json()


def finish(execution: TaskExecution, status: str) -> None:
    execution.started_at = timezone.now()
    _finish(
        execution, status=status, now=timezone.now(), error="boom" if status == "failed" else ""
    )


def test_task_b_runs_once_when_task_a_fails(api: APIClient) -> None:
    a = ScheduledTask.objects.get(pk=trigger_task(api)["id"])
    b = event_task(api, "task.failed", taskId=str(a.pk))
    any_failure = event_task(api, "task.failed")
    on_success = event_task(api, "task.completed")
    execution = TaskExecution.objects.create(task=a, trigger="manual", status="running")
    finish(execution, ExecutionStatus.FAILED)
    [b_run] = executions_of(b["id"])
    assert b_run.trigger == "event" and b_run.trigger_depth == 1
    assert b_run.payload["task"]["id"] == str(a.pk)
    assert b_run.payload["execution"] == {
        "id": str(execution.pk),
        "status": "failed",
        "trigger": "manual",
        "error": "boom",
        "result": None,
    }
    assert len(executions_of(any_failure["id"])) == 1
    assert executions_of(on_success["id"]) == []


@pytest.mark.parametrize(
    ("action", "status"),
    [
        ({"type": "file-operation", "operation": "list"}, "completed"),
        ({"type": "file-operation", "operation": "read", "path": "missing.txt"}, "failed"),
    ],
)
def test_a_run_starts_the_tasks_listening_to_its_outcome(
    api: APIClient, action: dict[str, Any], status: str
) -> None:
    """Through the worker's own path: the outcome's statement finds the listeners."""
    source = ScheduledTask.objects.get(pk=trigger_task(api)["id"])
    source.action = action
    source.save()
    on_success, on_failure = event_task(api, "task.completed"), event_task(api, "task.failed")
    execution = dispatch.task_run_now(task=source)
    claimed = executions.execution_claim(execution_id=str(execution.pk), attempt=1, worker="w:1")
    assert claimed is not None
    assert executions.execution_run(execution=claimed).status == status
    started = {
        "completed": executions_of(on_success["id"]),
        "failed": executions_of(on_failure["id"]),
    }
    assert len(started[status]) == 1 and started[status][0].payload["execution"]["status"] == status
    assert [run for other, runs in started.items() if other != status for run in runs] == []


def test_a_trigger_loop_stops_at_the_depth_limit(api: APIClient) -> None:
    """Task L is triggered by any task.failed and always fails: each failure triggers
    the next task in the ring; past the limit the run is recorded as failed, not run."""
    ring = [ScheduledTask.objects.get(pk=event_task(api, "task.failed")["id"]) for _ in range(2)]
    execution = TaskExecution.objects.create(task=ring[0], trigger="manual", status="running")
    for _ in range(triggers.MAX_TRIGGER_DEPTH + 3):
        finish(execution, ExecutionStatus.FAILED)
        queued = TaskExecution.objects.filter(status="queued").order_by("queued_at")
        if not queued:
            break
        execution = queued.first()
        execution.status = "running"
        execution.save()
    stopped = TaskExecution.objects.filter(trigger_depth__gt=triggers.MAX_TRIGGER_DEPTH)
    assert stopped.count() == 1
    loop = stopped.get()
    assert loop.status == "failed" and loop.error.startswith("trigger loop:")
    assert TaskExecution.objects.count() == triggers.MAX_TRIGGER_DEPTH + 2


def test_depth_header_from_our_own_requests_counts(api: APIClient) -> None:
    hook = make_hook(api)
    url = f"{path_of(hook)}?secret={hook['secret']}"
    deep = APIClient().post(url, ORDER, format="json", HTTP_X_SCHEDULER_TRIGGER_DEPTH="9")
    assert deep.status_code == 202
    [execution] = executions_of(hook["taskId"])
    assert execution.status == "failed" and "trigger loop" in execution.error
