"""webhook: one outbound HTTP request; 2xx succeeds, 429/5xx retry, other 4xx fail."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, JsonValue, field_validator

from . import egress, fields
from .base import TRIGGER_DEPTH_HEADER, ActionConfig, ActionResult, ExecutionContext, Executor
from .errors import PermanentError, RetryableError

KEPT_HEADERS = ("content-type", "content-length", "location", "retry-after", "etag", "x-request-id")
MAX_BODY_CHARS = 65536
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
DEPTH_HEADER = TRIGGER_DEPTH_HEADER


class WebhookConfig(ActionConfig):
    type: Literal["webhook"]
    url: str = Field(max_length=2048)
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, str] = Field(default_factory=dict)
    body: JsonValue = None
    timeout: float = Field(default=30.0, gt=0, le=300)

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    _valid_headers = field_validator("headers")(fields.http_headers)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return egress.check_http_url(value)


class WebhookExecutor(Executor[WebhookConfig]):
    action_type: ClassVar[str] = "webhook"
    Config = WebhookConfig

    def execute(self, config: WebhookConfig, ctx: ExecutionContext) -> ActionResult:
        headers = {
            "Idempotency-Key": ctx.idempotency_key,
            DEPTH_HEADER: str(ctx.trigger_depth + 1),
            **config.headers,
        }
        body: dict[str, Any] = {}
        if isinstance(config.body, str):
            body["data"] = config.body.encode()
        elif config.body is not None:
            body["json"] = config.body
        elif ctx.previous_result is not None and config.method in BODY_METHODS:
            body["json"] = ctx.previous_result  # a chain step without a body forwards its input
        ctx.log(f"{config.method} {egress.redact(config.url)}")
        response = egress.request(
            config.method,
            config.url,
            ctx.egress,
            headers=headers,
            params=config.query or None,
            timeout=config.timeout,
            **body,
        )
        ctx.log(f"answered {response.status} ({len(response.content)} bytes)")
        result = {
            "status": response.status,
            "headers": {k: v for k, v in response.headers.items() if k.lower() in KEPT_HEADERS},
            "body": _body(response),
        }
        if 200 <= response.status < 300:
            return ActionResult(output=result)
        message = f"{config.method} {egress.redact(config.url)} answered HTTP {response.status}"
        if response.status == 429 or response.status >= 500:
            raise RetryableError(message)
        raise PermanentError(message)


def _body(response: egress.EgressResponse) -> Any:
    if "json" in response.headers.get("Content-Type", "").lower():
        try:
            return response.json()
        except ValueError:
            pass
    return response.text[:MAX_BODY_CHARS]
