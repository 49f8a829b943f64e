"""executors.webhook.WebhookExecutor against the real loopback receiver."""

from __future__ import annotations

from typing import Any

import pytest

from executors.base import ActionResult, ExecutionContext
from executors.errors import ConfigError, EgressRefused, PermanentError, RetryableError
from executors.webhook import WebhookConfig, WebhookExecutor
from tests.executor_ctx import LOOPBACK, make_ctx
from tests.http_receiver import Receiver, Reply

EXECUTOR = WebhookExecutor()
KEY = "exec-7f3a:attempt-1"


SLOW = 0.5  # seconds a slow reply takes; every client timeout below is shorter


@pytest.fixture
def logs() -> list[str]:
    return []


@pytest.fixture
def ctx(logs: list[str]) -> ExecutionContext:
    return make_ctx(logs, execution_id="exec-7f3a", idempotency_key=KEY, egress=LOOPBACK)[0]


def run(raw: dict[str, Any], ctx: ExecutionContext) -> ActionResult:
    return EXECUTOR.execute(EXECUTOR.validate(raw), ctx)


# --- config validation -------------------------------------------------------------


def config_errors(raw: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        EXECUTOR.validate(raw)
    return caught.value.errors


def test_minimal_config_gets_defaults() -> None:
    config = EXECUTOR.validate({"type": "webhook", "url": "https://hooks.example.com/x"})
    assert config == WebhookConfig(
        type="webhook",
        url="https://hooks.example.com/x",
        method="POST",
        headers={},
        query={},
        body=None,
        timeout=30.0,
    )


def test_method_is_upper_cased() -> None:
    config = EXECUTOR.validate({"type": "webhook", "url": "http://a.example/", "method": "put"})
    assert config.method == "PUT"


@pytest.mark.parametrize("url", ["ftp://a.example/x", "file:///etc/passwd", "/relative", "http://"])
def test_url_must_be_absolute_http(url: str) -> None:
    assert config_errors({"type": "webhook", "url": url}) == [
        ("url", "Value error, must be an absolute http:// or https:// URL")
    ]


def test_url_length_is_capped() -> None:
    [(path, message)] = config_errors({"type": "webhook", "url": "http://a.example/" + "x" * 2048})
    assert path == "url"
    assert "at most 2048 characters" in message


def test_unknown_method_is_refused() -> None:
    [(path, message)] = config_errors(
        {"type": "webhook", "url": "http://a.example/", "method": "fetch"}
    )
    assert path == "method"
    assert message == "Input should be 'GET', 'POST', 'PUT', 'PATCH', 'DELETE' or 'HEAD'"


def test_unknown_field_is_refused() -> None:
    assert config_errors({"type": "webhook", "url": "http://a.example/", "retries": 3}) == [
        ("retries", "Extra inputs are not permitted")
    ]


def test_every_error_is_reported_with_its_path() -> None:
    errors = config_errors(
        {
            "type": "email",
            "method": 5,
            "headers": {"X-Ok": "1", "X-Num": 2},
            "timeout": 0,
        }
    )
    assert [path for path, _ in errors] == ["type", "url", "method", "headers.X-Num", "timeout"]
    assert dict(errors)["url"] == "Field required"
    assert dict(errors)["timeout"] == "Input should be greater than 0"


# --- what reaches the server ---------------------------------------------------------


def test_post_json_with_headers_and_query(receiver: Receiver, ctx: ExecutionContext) -> None:
    run(
        {
            "type": "webhook",
            "url": f"{receiver.url}/hook",
            "headers": {"X-Custom": "abc", "Authorization": "Bearer t0k"},
            "query": {"a": "1", "b": "two words"},
            "body": {"event": "tick", "n": [1, 2.5, None, True]},
        },
        ctx,
    )
    [got] = receiver.received("/hook")
    assert got.method == "POST"
    assert got.path == "/hook?a=1&b=two+words"
    assert got.headers["X-Custom"] == "abc"
    assert got.headers["Authorization"] == "Bearer t0k"
    assert got.headers["Content-Type"] == "application/json"
    assert got.json() == {"event": "tick", "n": [1, 2.5, None, True]}


def test_text_body_is_sent_verbatim(receiver: Receiver, ctx: ExecutionContext) -> None:
    run(
        {
            "type": "webhook",
            "url": f"{receiver.url}/hook",
            "method": "PUT",
            "headers": {"Content-Type": "text/plain; charset=utf-8"},
            "body": "héllo {{ not a template }}",
        },
        ctx,
    )
    [got] = receiver.received("/hook")
    assert got.method == "PUT"
    assert got.body == "héllo {{ not a template }}".encode()
    assert got.headers["Content-Type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize("method", ["GET", "DELETE", "PATCH", "HEAD"])
def test_method_reaches_the_server(receiver: Receiver, ctx: ExecutionContext, method: str) -> None:
    result = run({"type": "webhook", "url": f"{receiver.url}/m", "method": method}, ctx)
    [got] = receiver.received("/m")
    assert (got.method, got.body) == (method, b"")
    assert result.output["status"] == 200


def test_idempotency_key_is_the_context_key(receiver: Receiver, ctx: ExecutionContext) -> None:
    run({"type": "webhook", "url": f"{receiver.url}/hook"}, ctx)
    [got] = receiver.received("/hook")
    assert got.headers["Idempotency-Key"] == KEY


def test_user_supplied_idempotency_key_wins(receiver: Receiver, ctx: ExecutionContext) -> None:
    run(
        {
            "type": "webhook",
            "url": f"{receiver.url}/hook",
            "headers": {"Idempotency-Key": "mine"},
        },
        ctx,
    )
    [got] = receiver.received("/hook")
    assert got.headers["Idempotency-Key"] == "mine"


def test_user_supplied_idempotency_key_wins_in_any_case(
    receiver: Receiver, ctx: ExecutionContext
) -> None:
    run(
        {
            "type": "webhook",
            "url": f"{receiver.url}/hook",
            "headers": {"idempotency-key": "mine"},
        },
        ctx,
    )
    [got] = receiver.received("/hook")
    values = [v for k, v in got.headers.items() if k.lower() == "idempotency-key"]
    assert values == ["mine"]


# --- results and failures ------------------------------------------------------------


def test_success_result(receiver: Receiver, ctx: ExecutionContext, logs: list[str]) -> None:
    receiver.reply(
        "/hook",
        Reply(
            status=201,
            body={"id": 42, "tags": ["a"]},
            headers={"X-Request-Id": "req-9", "ETag": '"v1"', "X-Internal": "hidden"},
        ),
    )
    result = run({"type": "webhook", "url": f"{receiver.url}/hook"}, ctx)
    assert isinstance(result, ActionResult)
    assert result.output == {
        "status": 201,
        "headers": {
            "Content-Type": "application/json",
            "X-Request-Id": "req-9",
            "ETag": '"v1"',
            "Content-Length": "25",
        },
        "body": {"id": 42, "tags": ["a"]},
    }
    assert logs == [f"POST {receiver.url}/hook", "answered 201 (25 bytes)"]


def test_non_json_body_is_returned_as_text(receiver: Receiver, ctx: ExecutionContext) -> None:
    receiver.reply("/hook", Reply(body=b"plain ok", headers={"Content-Type": "text/plain"}))
    result = run({"type": "webhook", "url": f"{receiver.url}/hook"}, ctx)
    assert result.output["body"] == "plain ok"


def test_invalid_json_body_is_returned_as_text(receiver: Receiver, ctx: ExecutionContext) -> None:
    receiver.reply("/hook", Reply(body=b"{not json"))
    result = run({"type": "webhook", "url": f"{receiver.url}/hook"}, ctx)
    assert result.output["body"] == "{not json"


def test_long_text_body_is_truncated(receiver: Receiver, ctx: ExecutionContext) -> None:
    receiver.reply("/hook", Reply(body=b"z" * 70000, headers={"Content-Type": "text/plain"}))
    result = run({"type": "webhook", "url": f"{receiver.url}/hook"}, ctx)
    assert result.output["body"] == "z" * 65536


def test_redirect_is_followed(receiver: Receiver, ctx: ExecutionContext) -> None:
    receiver.reply("/hook", Reply(status=303, headers={"Location": "/moved"}))
    receiver.reply("/moved", Reply(body={"moved": True}))
    result = run({"type": "webhook", "url": f"{receiver.url}/hook", "body": {"a": 1}}, ctx)
    assert (result.output["status"], result.output["body"]) == (200, {"moved": True})
    assert [r.method for r in receiver.requests] == ["POST", "GET"]


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
def test_client_errors_are_permanent(
    receiver: Receiver, ctx: ExecutionContext, logs: list[str], status: int
) -> None:
    receiver.reply("/hook", Reply(status=status, body={"error": "nope"}))
    with pytest.raises(PermanentError) as caught:
        run({"type": "webhook", "url": f"{receiver.url}/hook"}, ctx)
    assert type(caught.value) is PermanentError
    assert str(caught.value) == f"POST {receiver.url}/hook answered HTTP {status}"
    assert logs == [f"POST {receiver.url}/hook", f"answered {status} (17 bytes)"]


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_rate_limit_and_server_errors_are_retryable(
    receiver: Receiver, ctx: ExecutionContext, status: int
) -> None:
    receiver.reply("/hook", Reply(status=status, headers={"Retry-After": "7"}))
    with pytest.raises(RetryableError) as caught:
        run({"type": "webhook", "url": f"{receiver.url}/hook", "method": "GET"}, ctx)
    assert str(caught.value) == f"GET {receiver.url}/hook answered HTTP {status}"
    assert len(receiver.received("/hook")) == 1


def test_timeout_from_config_is_retryable(receiver: Receiver, ctx: ExecutionContext) -> None:
    receiver.reply("/slow", Reply(delay=SLOW))
    with pytest.raises(RetryableError, match=r"timed out after 0\.1s$"):
        run({"type": "webhook", "url": f"{receiver.url}/slow", "timeout": 0.1}, ctx)


def test_loopback_is_refused_without_an_egress_allowance(
    receiver: Receiver, logs: list[str]
) -> None:
    ctx, _ = make_ctx(logs)
    with pytest.raises(EgressRefused):
        run({"type": "webhook", "url": f"{receiver.url}/hook"}, ctx)
    assert receiver.requests == []
    assert logs == [f"POST {receiver.url}/hook"]


def test_private_address_is_refused_before_sending(ctx: ExecutionContext) -> None:
    with pytest.raises(EgressRefused, match="resolves to 10.0.0.1"):
        run({"type": "webhook", "url": "http://10.0.0.1/hook"}, ctx)
