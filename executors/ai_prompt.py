"""ai-prompt: one call to Claude's Messages API through the anthropic SDK.

The SDK reads ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL itself. Its own retries are off:
Celery owns retries (overload, rate limit, 5xx and connection errors are retryable;
other 4xx are not).
"""

from __future__ import annotations

import os
from typing import ClassVar, Literal

import anthropic
from pydantic import Field

from .base import ActionConfig, ActionResult, ExecutionContext, Executor
from .errors import PermanentError, RetryableError

DEFAULT_MODEL_ENV = "SCHEDULER_AI_MODEL"
FALLBACK_MODEL = "claude-sonnet-5-5"
RETRYABLE_STATUSES = frozenset({408, 409, 429})


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
        model = config.model or os.environ.get(DEFAULT_MODEL_ENV) or FALLBACK_MODEL
        try:
            client = anthropic.Anthropic(max_retries=0, timeout=ctx.egress.timeout * 4)
        except anthropic.AnthropicError as exc:
            raise PermanentError(f"the Anthropic client is not configured: {exc}") from None
        request: dict[str, object] = {
            "model": model,
            "max_tokens": config.maxTokens,
            "messages": [{"role": "user", "content": config.prompt}],
        }
        if config.system:
            request["system"] = config.system
        if config.temperature is not None:
            # No longer a named parameter of the SDK; sent as given, the API decides.
            request["extra_body"] = {"temperature": config.temperature}
        ctx.log(f"asking {model} (max {config.maxTokens} tokens)")
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
            raise RetryableError(
                f"could not reach the Messages API: {type(exc).__name__}"
            ) from None
        text = "".join(block.text for block in message.content if block.type == "text")
        usage = {
            "inputTokens": message.usage.input_tokens,
            "outputTokens": message.usage.output_tokens,
        }
        ctx.log(
            f"answered: {message.stop_reason}, {usage['inputTokens']} tokens in, "
            f"{usage['outputTokens']} out"
        )
        return ActionResult(
            output={
                "text": text,
                "model": message.model,
                "stopReason": message.stop_reason,
                "usage": usage,
            }
        )


def _short(exc: anthropic.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    return str(message or exc.message)[:500]
