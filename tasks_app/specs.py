"""Typed shapes of the JSON parts of a task definition (camelCase, as in the guide)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, model_validator


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryPolicy(Spec):
    """The one retry policy: exponential backoff from ``backoffMs``, capped."""

    maxRetries: int = Field(default=0, ge=0, le=20)
    backoffMs: int = Field(default=60_000, ge=0, le=86_400_000)
    backoffMultiplier: float = Field(default=2.0, ge=1.0, le=10.0)
    maxBackoffMs: int = Field(default=3_600_000, ge=0, le=86_400_000)

    def delay_seconds(self, failed_attempt: int) -> float:
        """Delay before the attempt after ``failed_attempt`` (1-based)."""
        delay_ms = self.backoffMs * self.backoffMultiplier ** max(failed_attempt - 1, 0)
        return min(delay_ms, self.maxBackoffMs) / 1000.0


class Notification(Spec):
    """Who hears about an execution's outcome: by default the owner's e-mail address, the
    ``webhookUrl`` given here, and the owner's Web Push subscriptions."""

    onSuccess: bool = False
    onFailure: bool = False
    channels: list[Literal["email", "webhook", "push"]] = Field(default_factory=list, max_length=3)
    email: list[EmailStr] | None = Field(default=None, max_length=20)
    webhookUrl: str | None = Field(default=None, max_length=2048, pattern=r"^https?://[^\s/]+")

    @model_validator(mode="after")
    def _webhook_has_url(self) -> Notification:
        if "webhook" in self.channels and not self.webhookUrl:
            raise ValueError("the webhook channel needs a webhookUrl")
        return self


class Trigger(Spec):
    type: Literal["webhook", "email", "event"]
    config: dict[str, Any] = Field(default_factory=dict)


class Condition(Spec):
    type: str = Field(min_length=1, max_length=64)
    operator: str = Field(min_length=1, max_length=32)
    value: Any = None
    field: str | None = None


class Conditions(BaseModel):
    items: list[Condition] = Field(max_length=50)
