"""The guide's three Usage Examples and its API reference, as a new user would try them:
only HTTP to a running web process (Procfile ``web``) with a token, a real worker
behind it, a Claude stand-in (the real anthropic SDK pointed at a loopback receiver),
a real SMTP server (aiosmtpd) and a loopback receiver in place of storage.example.com."""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import Message
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests

from tests.anthropic_standin import PATH as CLAUDE_PATH
from tests.anthropic_standin import message as claude_message
from tests.guide import GUIDE_CREATE
from tests.http_receiver import Receiver, Reply
from tests.integration.conftest import Mailbox, make_stack
from tests.integration.stack import Stack, procfile_commands, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

USER = "user-123"  # the guide's userId: the user's own name, so its bodies work as written
USER_EMAIL = "user-123@example.org"
FINISHED = {"completed", "failed", "skipped"}


class Api:
    """The REST API as a client sees it: JSON over HTTP with ``Authorization: Token``."""

    def __init__(self, stack: Stack, token: str) -> None:
        self.stack = stack
        self.base = f"http://127.0.0.1:{stack.web_port}"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = path if path.startswith("http") else f"{self.base}{path}"
        return self.session.request(method, url, timeout=10, **kwargs)

    def expect(self, status: int, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON of a call that must answer ``status``."""
        response = self.call(method, path, **kwargs)
        assert response.status_code == status, (
            f"{method} {path} answered {response.status_code}, not {status}: {response.text}"
        )
        return response.json() if response.content else None

    def execution(self, execution_id: str) -> dict[str, Any]:
        return self.expect(200, "GET", f"/api/executions/{execution_id}")

    def finished(self, execution_id: str, timeout: float = 40) -> dict[str, Any]:
        """The execution once it has finished; on a timeout, what the processes said."""
        try:
            return wait_until(
                lambda: (e := self.execution(execution_id))["status"] in FINISHED and e,
                timeout,
                interval=0.3,
                message=f"execution {execution_id} not finished within {timeout}s: "
                f"{self.execution(execution_id)}",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.stack.log_tail(80)}") from None


def subset(expected: dict[str, Any], actual: dict[str, Any]) -> None:
    """Every key of ``expected`` is in ``actual`` with the same value."""
    assert {k: actual.get(k) for k in expected} == expected, actual


def text_of(mail: Message) -> str:
    """The text of a single-part message."""
    payload = mail.get_payload(decode=True)
    assert isinstance(payload, bytes), mail
    return payload.decode()


def requests_to(stack: Stack, http: Receiver, path: str, count: int = 1) -> list[Any]:
    try:
        return http.wait_for(path, count, timeout=40)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack.log_tail(80)}") from None


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, http: Receiver, mailbox: Mailbox
) -> Iterator[Stack]:
    """web + worker from the Procfile, on the embedded default."""
    extra = {
        **mailbox.env,
        "ANTHROPIC_BASE_URL": http.url,
        "ANTHROPIC_API_KEY": "sk-test",
        "SCHEDULER_EGRESS_ALLOW": "127.0.0.1",
    }
    stack = make_stack("embedded", tmp_path_factory.mktemp("guide"), extra_env=extra)
    try:
        stack.manage("migrate", "--noinput")
        commands = procfile_commands()
        stack.start("web", commands["web"])
        stack.start("worker", commands["worker"])
        stack.user_id = stack.orm(  # type: ignore[attr-defined]
            "from django.contrib.auth import get_user_model\n"
            f"result = get_user_model().objects.create_user({USER!r}, {USER_EMAIL!r}).pk"
        )
        assert stack.wait_http(f"http://127.0.0.1:{stack.web_port}/api/health") == 200
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def api(stack: Stack) -> Api:
    out = stack.manage("drf_create_token", USER)
    token = re.search(r"Generated token (\w+)", out)
    assert token, out
    return Api(stack, token.group(1))


def test_example_1_morning_briefing(
    api: Api, stack: Stack, http: Receiver, mailbox: Mailbox
) -> None:
    """ai-prompt on a weekday cron in New York; success notified by e-mail."""
    prompt = (
        "Generate a morning briefing with: 1) Top news headlines 2) Weather "
        "3) Calendar events 4) To-do list priorities"
    )
    body: dict[str, Any] = {
        "userId": USER,
        "name": "Morning Briefing",
        "type": "recurring",
        "schedule": {"cron": "0 8 * * 1-5", "timezone": "America/New_York"},
        "action": {"type": "ai-prompt", "prompt": prompt},
        "notification": {"onSuccess": True, "channels": ["email"]},
    }
    task = api.expect(201, "POST", "/api/tasks", json=body)
    subset({k: body[k] for k in ("userId", "name", "type", "schedule", "action")}, task)
    subset(body["notification"], task["notification"])
    assert task["status"] == "active" and task["runCount"] == 0 and task["lastRun"] is None
    next_run = datetime.fromisoformat(task["nextRun"]).astimezone(ZoneInfo("America/New_York"))
    assert (next_run.hour, next_run.minute, next_run.second) == (8, 0, 0)
    assert next_run.weekday() < 5 and next_run > datetime.now(UTC)

    answer = "Good morning! Markets are up, it is sunny, and you have two meetings."
    http.reply(CLAUDE_PATH, Reply(body=claude_message(answer, input_tokens=321, output_tokens=54)))
    before = len(http.received(CLAUDE_PATH))
    queued = api.expect(202, "POST", f"/api/tasks/{task['id']}/run")
    assert queued["taskId"] == task["id"] and queued["trigger"] == "manual"

    call = requests_to(stack, http, CLAUDE_PATH, before + 1)[before]
    headers = {k.lower(): v for k, v in call.headers.items()}
    # The key from ANTHROPIC_API_KEY (this SDK version sends it as a Bearer token).
    assert (
        headers.get("x-api-key") == "sk-test" or headers.get("authorization") == "Bearer sk-test"
    ), headers
    assert call.json()["messages"] == [{"role": "user", "content": prompt}]
    execution = api.finished(queued["id"])
    assert execution["status"] == "completed", execution
    assert execution["result"]["text"] == answer
    assert execution["usage"] == {"inputTokens": 321, "outputTokens": 54}
    assert execution["error"] is None and execution["attempt"] == 1

    [(recipients, mail)] = mailbox.wait_for(USER_EMAIL, "Morning Briefing", stack=stack)
    assert recipients == [USER_EMAIL]
    assert mail["Subject"] == "[scheduler] Morning Briefing completed"
    assert mail["From"] == "scheduler@example.org"
    text = text_of(mail)
    assert "Task: Morning Briefing" in text and answer in text
    assert f"/api/executions/{queued['id']}" in text

    history = api.expect(200, "GET", f"/api/tasks/{task['id']}/executions?limit=50")
    assert [e["id"] for e in history] == [queued["id"]]
    again = api.expect(200, "GET", f"/api/tasks/{task['id']}")
    assert again["runCount"] == 1 and again["lastRun"] is not None
    assert again["status"] == "active" and again["nextRun"] == task["nextRun"]


def test_example_2_nightly_backup_chain(
    api: Api, stack: Stack, http: Receiver, mailbox: Mailbox
) -> None:
    """file-operation backup -> webhook (gets the archive info) -> send-email, each step
    its own Celery task; the execution's steps show all three."""
    # There is no files API: a one-off file-operation task puts a file into /data first.
    seed = api.expect(
        201,
        "POST",
        "/api/tasks",
        json={
            "name": "Seed /data",
            "type": "one-time",
            "schedule": {"at": (datetime.now(UTC) + timedelta(days=30)).isoformat()},
            "action": {
                "type": "file-operation",
                "operation": "write",
                "path": "/data/orders.csv",
                "content": "id,total\n1,9.99\n2,20.00\n",
            },
        },
    )
    seeded = api.finished(api.expect(202, "POST", f"/api/tasks/{seed['id']}/run")["id"])
    assert seeded["status"] == "completed", seeded
    assert seeded["result"]["path"] == "/data/orders.csv"

    body: dict[str, Any] = {
        "userId": USER,
        "name": "Nightly Backup",
        "type": "recurring",
        "schedule": {"cron": "0 2 * * *"},
        "action": {
            "type": "chain",
            "tasks": [
                {"type": "file-operation", "operation": "backup", "path": "/data"},
                {"type": "webhook", "url": f"{http.url}/upload", "method": "POST"},
                {
                    "type": "send-email",
                    "to": "admin@example.com",
                    "subject": "Backup Complete",
                    "body": "Nightly backup completed successfully",
                },
            ],
        },
        "retryPolicy": {"maxRetries": 3, "backoffMs": 300000},
        "notification": {"onFailure": True, "channels": ["email"]},
    }
    task = api.expect(201, "POST", "/api/tasks", json=body)
    subset({k: body[k] for k in ("name", "type", "action")}, task)
    assert task["schedule"]["cron"] == "0 2 * * *"
    subset(body["retryPolicy"], task["retryPolicy"])
    subset(body["notification"], task["notification"])

    queued = api.expect(202, "POST", f"/api/tasks/{task['id']}/run")
    [upload] = requests_to(stack, http, "/upload")
    [(recipients, mail)] = mailbox.wait_for("admin@example.com", "Backup Complete", stack=stack)
    execution = api.finished(queued["id"])
    assert execution["status"] == "completed", execution

    # The webhook step had no body: it forwarded the backup step's result.
    archive = upload.json()
    assert upload.headers["Idempotency-Key"] == f"{queued['id']}:1"
    assert archive["path"] == "/data" and archive["files"] == 1
    assert archive["archive"].startswith("/backups/") and archive["archive"].endswith(".tar.gz")
    stored = stack.data_dir / "files" / f"user-{stack.user_id}" / archive["archive"][1:]  # type: ignore[attr-defined]
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == archive["sha256"]
    with tarfile.open(stored) as tar:
        assert "data/orders.csv" in tar.getnames()
    assert recipients == ["admin@example.com"]
    assert text_of(mail).strip() == ("Nightly backup completed successfully")

    steps = execution.get("steps")
    assert steps, f"GET /api/executions/{{id}} does not show the chain's steps: {execution}"
    assert [(s["type"], s["status"], s["attempt"]) for s in steps] == [
        ("file-operation", "completed", 1),
        ("webhook", "completed", 1),
        ("send-email", "completed", 1),
    ]
    assert steps[0]["result"] == archive
    assert steps[1]["result"]["status"] == 200
    assert steps[2]["result"]["subject"] == "Backup Complete"
    assert execution["result"] == steps[2]["result"]
    # Three run_step Celery tasks, one per step, each finished by the worker.
    log = stack.logs["worker"].read_text(errors="replace")
    ran = re.findall(
        r"Task tasks_app\.run_step\[([0-9a-f-]+)\] succeeded in [^:]+: "
        rf"\{{'outcome': '\w+', 'executionId': '{queued['id']}', 'step': (\d)\}}",
        log,
    )
    assert sorted(step for _, step in ran) == ["0", "1", "2"], ran
    assert len({celery_id for celery_id, _ in ran}) == 3
    # onFailure only: the success sends no notification.
    assert not mailbox.messages(USER_EMAIL, "Nightly Backup")


def test_guide_api_reference_flow(api: Api) -> None:
    """Create, list with filters, get, PUT keeping left-out fields, pause, resume,
    executions, upcoming, delete: status codes and returned fields."""
    assert requests.get(f"{api.base}/api/tasks", timeout=10).status_code == 401
    body: dict[str, Any] = {**GUIDE_CREATE, "userId": USER}
    task = api.expect(201, "POST", "/api/tasks", json=body)
    task_id = task["id"]
    subset({k: body[k] for k in ("userId", "name", "description", "type", "schedule")}, task)
    assert task["action"] == body["action"]
    subset(body["retryPolicy"], task["retryPolicy"])
    subset(body["notification"], task["notification"])
    assert task["status"] == "active" and task["nextRun"]
    hook = api.expect(
        201,
        "POST",
        "/api/tasks",
        json={
            "name": "Hook",
            "type": "trigger",
            "trigger": {"type": "webhook", "config": {}},
            "action": {"type": "ai-prompt", "prompt": "x"},
        },
    )

    listed = api.expect(200, "GET", f"/api/tasks?userId={USER}&status=active&type=recurring")
    ids = [t["id"] for t in listed["results"]]
    assert task_id in ids and hook["id"] not in ids
    assert all(t["type"] == "recurring" and t["status"] == "active" for t in listed["results"])
    assert listed["count"] == len(ids)
    triggers = api.expect(200, "GET", "/api/tasks?type=trigger")
    assert hook["id"] in [t["id"] for t in triggers["results"]]
    assert api.expect(200, "GET", f"/api/tasks/{task_id}") == task

    updated = api.expect(
        200,
        "PUT",
        f"/api/tasks/{task_id}",
        json={"name": "Updated Name", "schedule": {"cron": "0 10 * * *"}},
    )
    assert updated["name"] == "Updated Name"
    assert updated["schedule"] == {"cron": "0 10 * * *", "timezone": "America/New_York"}
    for kept in ("description", "type", "action", "retryPolicy", "notification", "userId"):
        assert updated[kept] == task[kept], kept
    next_run = datetime.fromisoformat(updated["nextRun"]).astimezone(ZoneInfo("America/New_York"))
    assert (next_run.hour, next_run.minute) == (10, 0)

    paused = api.expect(200, "POST", f"/api/tasks/{task_id}/pause")
    assert paused["status"] == "paused"
    upcoming = api.expect(200, "GET", f"/api/tasks/upcoming?userId={USER}&limit=10")
    assert task_id not in [u["taskId"] for u in upcoming]
    paused_list = api.expect(200, "GET", "/api/tasks?status=paused")
    assert [t["id"] for t in paused_list["results"]] == [task_id]
    resumed = api.expect(200, "POST", f"/api/tasks/{task_id}/resume")
    assert resumed["status"] == "active" and resumed["nextRun"]

    assert api.expect(200, "GET", f"/api/tasks/{task_id}/executions?limit=50") == []
    upcoming = api.expect(200, "GET", f"/api/tasks/upcoming?userId={USER}&limit=10")
    assert len(upcoming) <= 10
    [mine] = [u for u in upcoming if u["taskId"] == task_id]
    assert mine == {
        "taskId": task_id,
        "name": "Updated Name",
        "type": "recurring",
        "nextRun": resumed["nextRun"],
    }
    runs = [datetime.fromisoformat(u["nextRun"]) for u in upcoming]
    assert runs == sorted(runs)

    assert api.call("DELETE", f"/api/tasks/{task_id}").status_code == 204
    assert api.call("GET", f"/api/tasks/{task_id}").status_code == 404
    assert api.call("DELETE", f"/api/tasks/{hook['id']}").status_code == 204
    listed = api.expect(200, "GET", "/api/tasks?limit=500")
    assert not {task_id, hook["id"]} & {t["id"] for t in listed["results"]}


def test_example_3_webhook_triggered_task(api: Api, stack: Stack, http: Receiver) -> None:
    """A webhook trigger: its URL and secret, then an inbound POST runs the ai-prompt
    with the payload in ``{webhook_payload}``."""
    body: dict[str, Any] = {
        "userId": USER,
        "name": "Process Order",
        "type": "trigger",
        "trigger": {"type": "webhook", "config": {}},
        "action": {
            "type": "ai-prompt",
            "prompt": "Process this order and generate confirmation email: {webhook_payload}",
        },
    }
    task = api.expect(201, "POST", "/api/tasks", json=body)
    subset({k: body[k] for k in ("name", "type", "trigger", "action")}, task)
    assert task["schedule"] is None and task["nextRun"] is None

    hook = api.expect(201, "POST", f"/api/tasks/{task['id']}/webhook")
    assert hook["webhookUrl"] == f"{api.base}/api/webhooks/{hook['webhookId']}"
    assert len(hook["secret"]) >= 32

    answer = "Order confirmed. Dear customer, thank you for your order."
    http.reply(CLAUDE_PATH, Reply(body=claude_message(answer, input_tokens=60, output_tokens=12)))
    before = len(http.received(CLAUDE_PATH))
    payload = {"data": "your webhook payload"}
    # The sender of a webhook has the URL and the secret, not the user's API token.
    inbound = requests.post(
        hook["webhookUrl"], params={"secret": hook["secret"]}, json=payload, timeout=10
    )
    assert inbound.status_code == 202, f"{inbound.status_code}: {inbound.text[:300]}"
    execution_id = inbound.json()["executionId"]

    call = requests_to(stack, http, CLAUDE_PATH, before + 1)[before]
    prompt = call.json()["messages"][0]["content"]
    assert prompt == (
        "Process this order and generate confirmation email: "
        + json.dumps(payload, separators=(",", ":"))
    )
    execution = api.finished(execution_id)
    assert execution["status"] == "completed", execution
    assert execution["taskId"] == task["id"] and execution["trigger"] == "webhook"
    assert execution["result"]["text"] == answer
    assert execution["usage"] == {"inputTokens": 60, "outputTokens": 12}

    wrong = requests.post(
        hook["webhookUrl"], params={"secret": "not-the-secret"}, json=payload, timeout=10
    )
    assert wrong.status_code in {401, 403, 404}, wrong.text[:300]
    history = api.expect(200, "GET", f"/api/tasks/{task['id']}/executions?limit=50")
    assert [e["id"] for e in history] == [execution_id]
