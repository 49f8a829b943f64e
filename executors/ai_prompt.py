"""ai-prompt: one call to Claude's Messages API through the anthropic SDK.

:func:`ask_claude` is the one place that talks to Claude (also used by generate-report).
The SDK reads ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL itself. Its own retries are off:
Celery owns retries (overload, rate limit, 5xx and connection errors are retryable;
other 4xx and missing credentials are not).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from .base import ActionConfig, ActionResult, ExecutionContext, Executor
from .errors import PermanentError, RetryableError

if TYPE_CHECKING:
    import anthropic

DEFAULT_MODEL_ENV = "SCHEDULER_AI_MODEL"
FALLBACK_MODEL = "claude-sonnet-5-5"
RETRYABLE_STATUSES = frozenset({408, 409, 429})


@dataclass(frozen=True)
class ClaudeAnswer:
    text: str
    model: str
    stop_reason: str | None
    input_tokens: int
    output_tokens: int

    @property
    def usage(self) -> dict[str, int]:
        return {"inputTokens": self.input_tokens, "outputTokens": self.output_tokens}


def default_model() -> str:
    return os.environ.get(DEFAULT_MODEL_ENV) or FALLBACK_MODEL


def claude_configured() -> bool:
    """Whether credentials for the Messages API are in the environment."""
    return bool(os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN"))


def ask_claude(
    prompt: str,
    *,
    system: str | None = None,
    model: str | None = None,
    max_tokens: int = 1024,
    temperature: float | None = None,
    timeout: float = 60.0,
    log: Callable[[str], None] | None = None,
) -> ClaudeAnswer:
    """One user message to Claude; raises RetryableError or PermanentError on failure."""
    import anthropic  # imported when used: the SDK alone is ~80 MB of every process

    model = model or default_model()
    say = log or (lambda message: None)
    try:
        client = anthropic.Anthropic(max_retries=0, timeout=timeout)
    except anthropic.AnthropicError as exc:
        raise PermanentError(f"the Anthropic client is not configured: {exc}") from None
    request: dict[str, object] = {
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt}],
    }
    if system:
        request["system"] = system
    if temperature is not None:
        # No longer a named parameter of the SDK; sent as given, the API decides.
        request["extra_body"] = {"temperature": temperature}
    say(f"asking {model} (max {max_tokens} tokens)")
    try:
        message = client.messages.create(**request)  # type: ignore[call-overload]
    except anthropic.APIStatusError as exc:
        text = f"the Messages API answered HTTP {exc.status_code}: {_short(exc)}"
        if exc.status_code in RETRYABLE_STATUSES or exc.status_code >= 500:
            raise RetryableError(text) from None
        raise PermanentError(text) from None
    except TypeError as exc:  # the SDK found no credentials when sending
        raise PermanentError(f"the Anthropic client is not configured: {exc}") from None
    except (anthropic.APIConnectionError, anthropic.APITimeoutError) as exc:
        raise RetryableError(f"could not reach the Messages API: {type(exc).__name__}") from None
    answer = ClaudeAnswer(
        text="".join(block.text for block in message.content if block.type == "text"),
        model=message.model,
        stop_reason=message.stop_reason,
        input_tokens=message.usage.input_tokens,
        output_tokens=message.usage.output_tokens,
    )
    say(
        f"answered: {answer.stop_reason}, {answer.input_tokens} tokens in, "
        f"{answer.output_tokens} out"
    )
    return answer


class AIPromptConfig(ActionConfig):
    type: Literal["ai-prompt"]
    prompt: str = Field(min_length=1, max_length=200_000)
    model: str | None = Field(default=None, min_length=1, max_length=100)
    system: str | None = Field(default=None, max_length=100_000)
    maxTokens: int = Field(default=1024, ge=1, le=64_000)
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)


class AIPromptExecutor(Executor[AIPromptConfig]):
    action_type: ClassVar[str] = "ai-prompt"
    Config = AIPromptConfig

    def execute(self, config: AIPromptConfig, ctx: ExecutionContext) -> ActionResult:
        answer = ask_claude(
            config.prompt,
            system=config.system,
            model=config.model,
            max_tokens=config.maxTokens,
            temperature=config.temperature,
            timeout=ctx.egress.timeout * 4,
            log=ctx.log,
        )
        return ActionResult(
            output={
                "text": answer.text,
                "model": answer.model,
                "stopReason": answer.stop_reason,
                "usage": answer.usage,
            }
        )


def _short(exc: anthropic.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    return str(message or exc.message)[:500]
