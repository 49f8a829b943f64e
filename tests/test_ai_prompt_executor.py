"""ai-prompt with the real anthropic SDK, pointed by ANTHROPIC_BASE_URL at a loopback
stand-in that speaks the Messages API and records what the SDK sent."""

from __future__ import annotations

from typing import Any

import pytest

from executors.ai_prompt import AIPromptExecutor
from executors.errors import ConfigError, PermanentError, RetryableError
from tests.executor_ctx import make_ctx
from tests.http_receiver import Receiver, Reply

ANSWER = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-test-1",
    "content": [{"type": "text", "text": "Three insights: "}, {"type": "text", "text": "up."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 42, "output_tokens": 7},
}


def error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


@pytest.fixture
def claude(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> Receiver:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", receiver.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-key")
    monkeypatch.delenv("SCHEDULER_AI_MODEL", raising=False)
    receiver.reply("/v1/messages", Reply(body=ANSWER))
    return receiver


def run(action: dict[str, Any]) -> tuple[Any, list[str]]:
    executor = AIPromptExecutor()
    ctx, logs = make_ctx()
    return executor.execute(executor.validate(action), ctx), logs


def test_the_sdk_sends_the_prompt_and_the_answer_is_recorded(claude: Receiver) -> None:
    result, logs = run(
        {
            "type": "ai-prompt",
            "prompt": "Analyze the latest sales data",
            "model": "claude-3-5-sonnet-20241022",
            "system": "Be brief.",
            "maxTokens": 300,
            "temperature": 0.2,
        }
    )
    [request] = claude.received("/v1/messages")
    assert request.method == "POST"
    headers = {key.lower(): value for key, value in request.headers.items()}
    # Older SDKs send x-api-key, newer ones a bearer token: either carries our key.
    assert "sk-test-key" in (headers.get("x-api-key"), headers.get("authorization", "")[7:])
    assert headers["anthropic-version"]
    assert request.json() == {
        "model": "claude-3-5-sonnet-20241022",
        "max_tokens": 300,
        "system": "Be brief.",
        "temperature": 0.2,
        "messages": [{"role": "user", "content": "Analyze the latest sales data"}],
    }
    assert result.output == {
        "text": "Three insights: up.",
        "model": "claude-test-1",
        "stopReason": "end_turn",
        "usage": {"inputTokens": 42, "outputTokens": 7},
    }
    assert logs[0] == "asking claude-3-5-sonnet-20241022 (max 300 tokens)"


def test_the_default_model_is_configurable(
    claude: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    run({"type": "ai-prompt", "prompt": "hi"})
    monkeypatch.setenv("SCHEDULER_AI_MODEL", "claude-house-default")
    run({"type": "ai-prompt", "prompt": "hi"})
    first, second = claude.received("/v1/messages")
    assert first.json()["model"] == "claude-sonnet-5-5"
    assert second.json()["model"] == "claude-house-default"
    assert "system" not in first.json() and "temperature" not in first.json()
    assert first.json()["max_tokens"] == 1024


@pytest.mark.parametrize(
    ("status", "kind", "expected"),
    [
        (429, "rate_limit_error", RetryableError),
        (529, "overloaded_error", RetryableError),
        (500, "api_error", RetryableError),
        (400, "invalid_request_error", PermanentError),
        (401, "authentication_error", PermanentError),
    ],
)
def test_errors_are_classified_and_the_sdk_does_not_retry(
    claude: Receiver, status: int, kind: str, expected: type[Exception]
) -> None:
    claude.reply("/v1/messages", Reply(status=status, body=error(kind, "nope: " + kind)))
    with pytest.raises(expected) as caught:
        run({"type": "ai-prompt", "prompt": "hi"})
    assert str(caught.value) == f"the Messages API answered HTTP {status}: nope: {kind}"
    assert len(claude.received("/v1/messages")) == 1  # Celery owns retries, not the SDK


def test_unreachable_api_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-key")
    with pytest.raises(RetryableError, match="could not reach the Messages API"):
        run({"type": "ai-prompt", "prompt": "hi"})


def test_missing_api_key_is_a_clear_permanent_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    with pytest.raises(PermanentError, match="not configured"):
        run({"type": "ai-prompt", "prompt": "hi"})


@pytest.mark.parametrize(
    ("action", "path"),
    [
        ({"type": "ai-prompt"}, "prompt"),
        ({"type": "ai-prompt", "prompt": ""}, "prompt"),
        ({"type": "ai-prompt", "prompt": "x", "maxTokens": 0}, "maxTokens"),
        ({"type": "ai-prompt", "prompt": "x", "temperature": 3}, "temperature"),
        ({"type": "ai-prompt", "prompt": "x", "tools": []}, "tools"),
    ],
)
def test_config_errors_name_the_field(action: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        AIPromptExecutor().validate(action)
    assert path in [p for p, _ in caught.value.errors]


@pytest.mark.django_db
def test_an_ai_task_run_keeps_text_and_usage_on_its_execution(claude: Receiver, user: Any) -> None:
    from tasks_app.models import ExecutionTrigger, TaskExecution
    from tasks_app.services import executions
    from tasks_app.services.definitions import task_create

    task = task_create(
        owner=user,
        name="Morning Briefing",
        type="recurring",
        cron="0 8 * * 1-5",
        timezone="America/New_York",
        action={"type": "ai-prompt", "prompt": "Generate a morning briefing"},
    )
    queued = TaskExecution.objects.create(task=task, trigger=ExecutionTrigger.MANUAL)
    claimed = executions.execution_claim(execution_id=str(queued.pk), attempt=1, worker="w:1")
    assert executions.execution_run(execution=claimed).status == "completed"
    stored = TaskExecution.objects.get(pk=queued.pk)
    assert stored.result["text"] == "Three insights: up."
    assert stored.result["usage"] == {"inputTokens": 42, "outputTokens": 7}
