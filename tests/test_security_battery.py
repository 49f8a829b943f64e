"""The security battery (issue 8): per-user isolation on every route the URL resolver
knows (a new endpoint is covered without editing this file), the public set exactly,
the admin for non-staff, egress spellings and mixed DNS answers, template injection
through ``{previous_result}``, a chain step killed at the hard time limit, and secrets
redacted from access logs."""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib import admin
from django.db import models
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.test import APIClient
from rest_framework.throttling import ScopedRateThrottle

from executors.egress import EgressPolicy, check_url, request
from executors.errors import EgressRefused
from executors.templating import TemplateError, render_value
from tests.api_clients import token_client
from tests.http_receiver import Receiver, Reply

METHODS = ("get", "post", "patch", "delete", "put")  # put last: see OWN_NAMESPACE
MARK = "alice-private-7f3a"  # in every name, title and value user A stores
#: Routes reachable without a token, by design: each has its own credential or none.
PUBLIC = {
    "": "redirects to the admin",
    "accounts/login/": "the login page",
    "accounts/logout/": "the logout page",
    "api/health": "health check",
    "api/schema/": "OpenAPI document",
    "api/docs/": "Swagger page of the OpenAPI document",
    "api/webhooks/{webhook_id}": "inbound webhook: its secret or signature is the credential",
    "calendar/{token}.ics": "iCal feed: the token in the URL is the credential",
}
#: The path parameter of these routes is itself the secret: whoever holds it may read.
BEARER_ROUTES = {"calendar/{token}.ics"}
#: Names in these routes are per caller: B's PUT makes B's own variable, not A's.
OWN_NAMESPACE = {("api/variables/{name}", "put")}
#: The segment before a path parameter says which of A's objects it names.
ID_SEGMENTS = {
    "tasks",
    "executions",
    "reports",
    "subscriptions",
    "variables",
    "webhooks",
    "calendar",
}


# --- routes from the resolver ---------------------------------------------------------


def _pattern_text(pattern: Any) -> str:
    text = str(pattern)
    if text.startswith("^") or text.endswith("$"):  # a regex pattern (DRF's router)
        text = text.lstrip("^").rstrip("$").replace("/?", "")
        return re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", text)
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", text)


def _walk(patterns: list[Any], prefix: str = "") -> Iterator[str]:
    for entry in patterns:
        text = prefix + _pattern_text(entry.pattern)
        if isinstance(entry, URLResolver):
            if text.startswith("admin/"):
                continue  # the admin has its own test below
            yield from _walk(entry.url_patterns, text)
        elif isinstance(entry, URLPattern):
            yield text


def routes() -> list[str]:
    return sorted(set(_walk(get_resolver().url_patterns)))


def test_the_resolver_walk_finds_every_path_of_the_openapi_document() -> None:
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)

    def shape(path: str) -> str:
        return re.sub(r"\{\w+\}", "{}", path.strip("/"))

    documented = {shape(path) for path in schema["paths"]}
    walked = {shape(route) for route in routes()}
    assert documented <= walked, documented - walked
    assert len(documented) >= 30


# --- user A's world -------------------------------------------------------------------


@dataclass
class World:
    alice: Any
    api: APIClient
    task_ids: list[str]
    ids: dict[str, str]  # segment -> one of A's ids for it
    secrets: list[str]  # strings only A knows (never sent by B)


@pytest.fixture
def world(
    django_user_model: Any, settings: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> World:
    from tasks_app.models import Report, TaskExecution

    settings.DATA_DIR = tmp_path  # the VAPID key for /api/push/key
    settings.SCHEDULER_VAPID_PRIVATE_KEY = ""
    monkeypatch.setattr(ScopedRateThrottle, "allow_request", lambda self, request, view: True)
    alice = django_user_model.objects.create(username="alice")
    api = token_client(alice)

    def made(response: Any, status: int = 201) -> dict[str, Any]:
        assert response.status_code == status, response.content
        return response.json()

    recurring = made(
        api.post(
            "/api/tasks",
            {
                "name": f"Recurring {MARK}",
                "type": "recurring",
                "schedule": {"cron": "0 9 * * *", "timezone": "UTC"},
                "action": {
                    "type": "webhook",
                    "url": "https://api.example.com/notify",
                    "headers": {"Authorization": f"Bearer {MARK}-header"},
                },
            },
            format="json",
        )
    )
    trigger = made(
        api.post(
            "/api/tasks",
            {
                "name": f"Trigger {MARK}",
                "type": "trigger",
                "trigger": {"type": "webhook", "config": {}},
                "action": {"type": "ai-prompt", "prompt": f"{MARK}: {{webhook_payload}}"},
            },
            format="json",
        )
    )
    hook = made(api.post(f"/api/tasks/{trigger['id']}/webhook", None, format="json"))
    execution = made(api.post(f"/api/tasks/{recurring['id']}/run"), 202)
    made(api.put(f"/api/variables/{MARK}", {"value": f"{MARK}-value"}, format="json"), 200)
    browser = {"endpoint": f"https://push.example.net/send/{MARK}", "keys": _push_keys()}
    subscription = made(api.post("/api/push/subscriptions", browser, format="json"))
    feed = made(api.post("/api/calendar/feed"))
    report = Report.objects.create(
        owner=alice,
        task_id=recurring["id"],
        execution=TaskExecution.objects.get(pk=execution["id"]),
        title=f"Report {MARK}",
        html=f"<p>{MARK}</p>",
        markdown=MARK,
    )
    token = feed["url"].rsplit("/", 1)[1].removesuffix(".ics")
    return World(
        alice=alice,
        api=api,
        task_ids=[recurring["id"], trigger["id"]],
        ids={
            "tasks": recurring["id"],
            "executions": execution["id"],
            "reports": str(report.pk),
            "subscriptions": subscription["id"],
            "variables": MARK,
            "webhooks": hook["webhookId"],
            "calendar": token,
        },
        secrets=[MARK, hook["secret"], token],
    )


def _push_keys() -> dict[str, str]:
    from tests.test_notifications import Browser, b64url

    browser = Browser()
    return {"p256dh": browser.p256dh, "auth": b64url(browser.auth)}


def fill(route: str, ids: dict[str, str], task_id: str | None = None) -> str:
    """``route`` with A's ids in it; a parameter after an unknown segment fails loudly, so
    a new kind of endpoint must be taught to the battery before it can ship."""
    parts = route.split("/")
    for i, part in enumerate(parts):
        found = re.search(r"\{(\w+)\}", part)
        if not found:
            continue
        segment = parts[i - 1] if i else ""
        assert segment in ID_SEGMENTS, f"{route}: which of A's objects does {part} name?"
        value = task_id if segment == "tasks" and task_id else ids[segment]
        parts[i] = part.replace(found.group(0), value)
    return "/" + "/".join(parts)


def snapshot() -> dict[tuple[str, Any], dict[str, Any]]:
    """Every row of the scheduler's and beat's tables (B owns none when it is taken)."""
    from django.apps import apps

    rows: dict[tuple[str, Any], dict[str, Any]] = {}
    for label in ("tasks_app", "django_celery_beat"):
        for model in apps.get_app_config(label).get_models():
            for row in model.objects.values():
                rows[(model._meta.label, row[model._meta.pk.attname])] = row
    return rows


def hostile_bodies(world: World) -> list[dict[str, Any]]:
    """What B sends with every write, each valid for some endpoint: A's ids, and fields
    that would change A's objects."""
    return [
        {"action": "delete", "ids": world.task_ids},
        {"value": "pwned"},
        {"name": "pwned", "active": False, "requireSignature": True},
    ]


def leaked(response: Any, world: World, sent: str) -> list[str]:
    """A's secrets and ids in ``response`` that B did not send itself."""
    body = response.content.decode(errors="replace")
    mine = [*world.secrets, *world.ids.values(), *world.task_ids]
    return [value for value in mine if value in body and value not in sent]


# --- two users, every route -----------------------------------------------------------


@pytest.mark.django_db
def test_another_user_reaches_none_of_my_objects_on_any_route(
    world: World, django_user_model: Any
) -> None:
    user = django_user_model.objects.create(username="bob")
    bob = token_client(user)
    browser = Client()  # the pages outside /api/ sign in with a session
    browser.force_login(user)
    before = snapshot()
    checked: list[tuple[str, str, int]] = []
    for route in routes():
        if route in BEARER_ROUTES or route in ("accounts/login/", "accounts/logout/"):
            continue
        with_id = "{" in route
        task_ids = world.task_ids if route.startswith("api/tasks/{") else [None]
        for task_id in task_ids:
            path = fill(route, world.ids, task_id)
            client = bob if route.startswith("api/") else browser
            calls = [("get", None)] + [(m, b) for m in METHODS[1:] for b in hostile_bodies(world)]
            for method, body in calls:
                if body is None:
                    response = client.get(path)
                else:
                    response = getattr(client, method)(path, body, content_type="application/json")
                sent = path + repr(body)
                code = response.status_code
                checked.append((route, method, code))
                where = f"{method.upper()} {path} -> {code}: {response.content[:300]!r}"
                assert code < 500, where
                assert not leaked(response, world, sent), where
                if not with_id or route in PUBLIC:
                    allowed = {401, 404, 405} if route in PUBLIC and with_id else None
                    assert allowed is None or code in allowed, where
                    continue
                if (route, method) in OWN_NAMESPACE:
                    continue
                assert code in {403, 404, 405}, where
            if not with_id and route.startswith("api/"):
                response = bob.get(f"{path}?userId=alice")
                assert response.status_code in {403, 404, 405} or not leaked(
                    response, world, path
                ), (path, response.content[:300])
    assert not _changed(before, snapshot())
    from tasks_app.models import UserVariable

    # B's PUT on A's variable name made B's own variable; A's is untouched.
    assert UserVariable.objects.get(owner=user, name=MARK).value == "pwned"
    assert UserVariable.objects.get(owner=world.alice).value == f"{MARK}-value"
    assert len({route for route, _, _ in checked}) >= 30
    print(f"\n{len(checked)} (route, method, body) calls by user B on {len(routes())} routes")


def _changed(before: dict[Any, Any], after: dict[Any, Any]) -> list[Any]:
    """The rows that B changed or deleted: (table, pk)."""
    return [key for key, row in before.items() if after.get(key) != row]


@pytest.mark.django_db
def test_without_a_token_only_the_documented_routes_answer(world: World) -> None:
    anonymous = APIClient()
    login = reverse("login")
    public: set[str] = set()
    for route in routes():
        path = fill(route, world.ids)
        for method in METHODS:
            response = getattr(anonymous, method)(path)
            code = response.status_code
            assert code < 500, (method, path, code)
            refused = code in {401, 403} or (code == 302 and response["Location"].startswith(login))
            if not refused:
                public.add(route)
            if route not in BEARER_ROUTES:
                assert not leaked(response, world, path), (method, path)
    assert public == set(PUBLIC)


@pytest.mark.django_db
def test_the_admin_sends_non_staff_to_its_login(world: World, django_user_model: Any) -> None:
    from django.apps import apps

    bob = django_user_model.objects.create(username="bob", is_active=True)
    browser = Client()
    browser.force_login(bob)
    registered = [m for m in admin.site._registry if m._meta.app_label == "tasks_app"]
    assert len(registered) >= 3
    urls: list[str] = []
    for model in registered:
        info = f"admin:{model._meta.app_label}_{model._meta.model_name}"
        urls += [reverse(f"{info}_changelist"), reverse(f"{info}_add")]
        row: models.Model | None = apps.get_model(model._meta.label).objects.first()
        assert row is not None, f"A has no {model._meta.label} to try"
        for view in ("change", "delete", "history"):
            urls.append(reverse(f"{info}_{view}", args=[row.pk]))
    for client in (browser, Client()):
        for url in urls:
            for method in ("get", "post"):
                response = getattr(client, method)(url)
                assert response.status_code == 302, (method, url, response.status_code)
                assert response["Location"].startswith(reverse("admin:login")), url
    assert len(urls) >= 15


# --- egress: what tests/test_egress.py does not cover ---------------------------------

OTHER_SPELLINGS = [
    ("http://[::ffff:7f00:1]/", "::ffff:127.0.0.1"),  # mapped loopback, hex spelling
    ("http://[fc00::1]/", "fc00::1"),  # the other half of fc00::/7
    ("http://[fdff:ffff::1]/", "fdff:ffff::1"),
    ("http://[febf:ffff::1]/", "febf:ffff::1"),  # top of fe80::/10
    ("http://[::]/", "::"),
    ("http://0177.0.0.1/", "127.0.0.1"),  # octal
    ("http://0x7f.1/", "127.0.0.1"),  # hex, short
    ("http://0x7f000001/", "127.0.0.1"),  # hex, whole
    ("http://017700000001/", "127.0.0.1"),  # octal, whole
    ("http://0/", "0.0.0.0"),
    ("http://100.127.255.254/", "100.127.255.254"),  # top of 100.64.0.0/10
]


@pytest.mark.parametrize(("url", "address"), OTHER_SPELLINGS)
def test_other_spellings_of_private_addresses_are_refused(url: str, address: str) -> None:
    with pytest.raises(EgressRefused) as caught:
        check_url(url, EgressPolicy())
    assert f"it resolves to {ipaddress.ip_address(address)}, which is not a public" in str(
        caught.value
    )


def _answers(monkeypatch: pytest.MonkeyPatch, name: str, addresses: list[str]) -> None:
    real = socket.getaddrinfo

    def resolve(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == name:
            return [
                (
                    socket.AF_INET6 if ":" in a else socket.AF_INET,
                    socket.SOCK_STREAM,
                    6,
                    "",
                    (a, port),
                )
                for a in addresses
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)


@pytest.mark.parametrize(
    "addresses",
    [
        ["93.184.216.34", "10.0.0.1"],
        ["10.0.0.1", "93.184.216.34"],
        ["93.184.216.34", "8.8.8.8", "169.254.169.254"],
        ["2606:4700::1111", "::1"],
        ["93.184.216.34", "::ffff:127.0.0.1"],
    ],
)
def test_a_dns_answer_mixing_public_and_private_addresses_is_refused(
    monkeypatch: pytest.MonkeyPatch, addresses: list[str]
) -> None:
    _answers(monkeypatch, "mixed.test", addresses)
    with pytest.raises(EgressRefused, match="^refused to connect to 'mixed.test': it resolves"):
        check_url("https://mixed.test/x", EgressPolicy())


def test_a_dns_answer_of_public_addresses_only_is_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _answers(monkeypatch, "public.test", ["93.184.216.34", "2606:4700::1111"])
    assert check_url("https://public.test/x", EgressPolicy()) is None


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:{port}/x",
        "http://0177.0.0.1:{port}/x",
        "http://0x7f.1:{port}/x",
        "http://2130706433:{port}/x",
        "http://127.1:{port}/x",
        "http://[::1]:{port}/x",
        "http://[::ffff:7f00:1]:{port}/x",
        "http://0.0.0.0:{port}/x",
        "http://mixed.test:{port}/x",
        "http://100.64.0.1/",
        "http://[fc00::1]/",
        "http://[fe80::1]/",
    ],
)
def test_a_redirect_to_another_spelling_of_a_private_address_is_refused(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    """Only the host name ``localhost`` is allowed; each target would reach the same
    receiver (or another private host) if the hop were not checked again."""
    _answers(monkeypatch, "mixed.test", ["93.184.216.34", "127.0.0.1"])
    port = receiver.server.server_address[1]
    receiver.reply("/start", Reply(status=302, headers={"Location": target.format(port=port)}))
    receiver.reply("/x", Reply(body={"reached": True}))
    with pytest.raises(EgressRefused):
        request("GET", f"http://localhost:{port}/start", EgressPolicy(allow=("localhost",)))
    assert [r.path for r in receiver.requests] == ["/start"]


def test_proxy_variables_of_the_environment_are_ignored(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy would be the real peer, so the guard could not check where bytes go."""
    with Receiver() as proxy:
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, proxy.url)
        receiver.reply("/direct", Reply(body={"direct": True}))
        response = request("GET", f"{receiver.url}/direct", EgressPolicy(allow=("127.0.0.1",)))
        assert response.json() == {"direct": True}
        assert proxy.requests == []


# --- templates: {previous_result} from an earlier chain step --------------------------

HOSTILE_RESULT = {
    "braces": "{task.name} {previous_result} {{previous_result}} {now} {webhook_payload}",
    "crlf": "fine\r\nX-Injected: 1",
    "lf": "fine\nX-Injected: 1",
    "url": "a&b=c#frag /../admin?x=1%2F",
}
SCOPE = {
    "previous_result": HOSTILE_RESULT,
    "task": {"id": "t-1", "name": "SECRET-TASK-NAME"},
    "now": "NOW",
    "webhook_payload": {"k": "PAYLOAD"},
}


def test_placeholders_inside_a_previous_result_stay_literal() -> None:
    action = {
        "type": "send-email",
        "subject": "Re: {previous_result.braces}",
        "body": "{previous_result.braces}",
        "to": "a@example.com",
    }
    rendered = render_value(action, SCOPE)
    assert rendered["subject"] == f"Re: {HOSTILE_RESULT['braces']}"
    assert rendered["body"] == HOSTILE_RESULT["braces"]


@pytest.mark.parametrize("key", ["crlf", "lf"])
def test_a_previous_result_with_a_line_break_cannot_reach_a_header(key: str) -> None:
    for template in (f"{{previous_result.{key}}}", f"x {{previous_result.{key}}}"):
        action = {"type": "webhook", "url": "https://x.example/", "headers": {"X-N": template}}
        with pytest.raises(TemplateError, match="line break"):
            render_value(action, SCOPE)


def test_a_previous_result_cannot_break_out_of_its_place_in_a_url() -> None:
    from urllib.parse import parse_qs, urlsplit

    for field in ("url", "webhookUrl"):
        template = "https://x.example/p/{previous_result.url}?q={previous_result.url}&k=1"
        url = render_value({"type": "webhook", field: template}, SCOPE)[field]
        parts = urlsplit(url)
        assert (parts.netloc, parts.fragment) == ("x.example", "")
        assert parts.path.count("/") == 2 and ".." not in parts.path.split("/")
        assert parse_qs(parts.query) == {"q": [HOSTILE_RESULT["url"]], "k": ["1"]}


@pytest.mark.django_db(transaction=True)
def test_a_chain_step_renders_the_previous_result_inert(
    user: Any,
    receiver: Receiver,
    egress_allow_loopback: None,
    memory_broker: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    """End to end: step 1 fetches hostile text, step 2 sends it on in a URL and a body."""
    from tests.test_chains import chain_task, run_step, start

    receiver.reply("/evil", Reply(body=HOSTILE_RESULT))
    receiver.reply("/next", Reply(body={}))
    task = chain_task(
        user,
        [
            {"type": "webhook", "url": f"{receiver.url}/evil", "method": "GET"},
            {
                "type": "webhook",
                "url": f"{receiver.url}/next?q={{previous_result.body.url}}",
                "method": "POST",
                "body": {"text": "{previous_result.body.braces}"},
            },
        ],
    )
    execution = start(task, memory_broker, django_capture_on_commit_callbacks)
    assert [run_step(execution, i).status for i in range(2)] == ["next", "completed"]
    [sent] = receiver.received("/next")
    from urllib.parse import parse_qs, urlsplit

    assert parse_qs(urlsplit(sent.path).query) == {"q": [HOSTILE_RESULT["url"]]}
    assert sent.json() == {"text": HOSTILE_RESULT["braces"]}


# --- a chain step killed at the hard time limit ---------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_chain_step_killed_at_the_hard_limit_fails_and_is_not_rerun(
    user: Any,
    settings: Any,
    receiver: Receiver,
    egress_allow_loopback: None,
    memory_broker: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    from celery.exceptions import TimeLimitExceeded
    from django.utils import timezone

    from tasks_app.models import ExecutionStatus, TaskExecution
    from tasks_app.services import chains, recovery
    from tasks_app.tasks import run_step as run_step_task
    from tests.test_chains import chain_task, start

    settings.SCHEDULER_TASK_TIME_LIMIT = 60
    settings.SCHEDULER_REQUEUE_AFTER = 300
    task = chain_task(user, [{"type": "webhook", "url": f"{receiver.url}/{i}"} for i in range(3)])
    execution = start(task, memory_broker, django_capture_on_commit_callbacks)
    pk = str(execution.pk)
    assert chains.step_claim(execution_id=pk, step=0, attempt=1, worker="w:0")
    kwargs = {"execution_id": pk, "step": 0, "attempt": 1}
    run_step_task.on_failure(TimeLimitExceeded(20.0), "celery-id", (), kwargs, None)

    killed = TaskExecution.objects.get(pk=pk)
    assert killed.status == ExecutionStatus.FAILED
    assert killed.error == (
        "step 1 of 3 (webhook) failed: the action exceeded the hard time limit of 20s "
        "and was killed"
    )
    assert [s["status"] for s in killed.steps] == ["failed", "not-run", "not-run"]
    assert killed.lease_expires_at is None and killed.completed_at is not None
    # Not a lost worker: neither recovery nor a redelivery of the step runs it again.
    TaskExecution.objects.filter(pk=pk).update(enqueued_at=timezone.now().replace(year=2000))
    with django_capture_on_commit_callbacks(execute=True):
        assert recovery.executions_recover() == 0
    assert chains.step_claim(execution_id=pk, step=0, attempt=1, worker="w:again") is None
    assert TaskExecution.objects.get(pk=pk).status == ExecutionStatus.FAILED
    assert receiver.requests == []


# --- access logs ----------------------------------------------------------------------

WEBHOOK_LINE = "POST /api/webhooks/abc?secret=whsec_TOPSECRET&x=1 HTTP/1.1"


def _through_handler(logger_name: str, handler_name: str, emit: Any) -> str:
    """What the configured handler writes for the records ``emit`` logs."""
    import io

    handlers = [h for h in logging.getLogger(logger_name).handlers if h.name == handler_name]
    if not handlers:
        handlers = [h for h in logging.getLogger().handlers if h.name == handler_name]
    [handler] = handlers
    stream = io.StringIO()
    old = handler.setStream(stream)  # type: ignore[attr-defined]
    try:
        emit()
    finally:
        handler.setStream(old)  # type: ignore[attr-defined]
    return stream.getvalue()


def test_runserver_access_lines_are_redacted_by_the_configured_handler() -> None:
    server = logging.getLogger("django.server")
    out = _through_handler(
        "django.server",
        "django.server",
        lambda: server.info('"%s" %s %s', WEBHOOK_LINE, "202", "40", extra={"status_code": 202}),
    )
    assert "TOPSECRET" not in out and "secret=[redacted]&x=1" in out


def test_application_log_lines_are_redacted_by_the_console_handler() -> None:
    app = logging.getLogger("tasks_app.security_battery")
    out = _through_handler(
        "",
        "console",
        lambda: app.warning(
            "calling %s failed; token=%s", "https://h.example/x?api_key=K3Y&a=1", "T0K"
        ),
    )
    assert "K3Y" not in out and "api_key=[redacted]&a=1" in out


def test_gunicorns_access_log_format_leaves_the_query_string_out() -> None:
    import io
    import runpy
    from datetime import timedelta
    from pathlib import Path
    from types import SimpleNamespace

    pytest.importorskip("gunicorn")
    from gunicorn.config import Config
    from gunicorn.glogging import Logger

    conf = runpy.run_path(str(Path(__file__).resolve().parent.parent / "gunicorn.conf.py"))
    cfg = Config()
    for name in ("accesslog", "access_log_format"):
        cfg.set(name, conf[name])
    log = Logger(cfg)
    stream = io.StringIO()
    log.access_log.handlers = [logging.StreamHandler(stream)]
    environ = {
        "REQUEST_METHOD": "POST",
        "RAW_URI": "/api/webhooks/abc?secret=whsec_TOPSECRET",
        "PATH_INFO": "/api/webhooks/abc",
        "QUERY_STRING": "secret=whsec_TOPSECRET",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "203.0.113.9",
        "HTTP_REFERER": "https://ref.example/?token=REFTOKEN",
    }
    response = SimpleNamespace(status="202 Accepted", headers=[], response_length=2, sent=2)
    request_ = SimpleNamespace(headers=[("HOST", "sched.example")])
    log.access(response, request_, environ, timedelta(milliseconds=3))
    line = stream.getvalue()
    assert '"POST /api/webhooks/abc HTTP/1.1" 202 2 ' in line
    assert "TOPSECRET" not in line and "REFTOKEN" not in line


def test_the_filter_redacts_records_with_mapping_args() -> None:
    from scheduler_project.logfilters import RedactSecrets

    record = logging.LogRecord(
        "gunicorn.access",
        logging.INFO,
        __file__,
        1,
        '"%(r)s" %(s)s',
        ({"r": WEBHOOK_LINE, "s": "202"},),
        None,
    )
    RedactSecrets().filter(record)
    assert "TOPSECRET" not in record.getMessage()
