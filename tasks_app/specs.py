"""Typed shapes of the JSON parts of a task definition (camelCase, as in the guide)."""

from __future__ import annotations

import random
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, model_validator


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryPolicy(Spec):
    """The one retry policy: exponential backoff from ``backoffMs``, spread by ``jitter``
    (a fraction: 0.1 means up to 10 % earlier or later), capped at ``maxBackoffMs``."""

    maxRetries: int = Field(default=0, ge=0, le=20)
    backoffMs: int = Field(default=60_000, ge=0, le=86_400_000)
    backoffMultiplier: float = Field(default=2.0, ge=1.0, le=10.0)
    maxBackoffMs: int = Field(default=3_600_000, ge=0, le=86_400_000)
    jitter: float = Field(default=0.1, ge=0.0, le=1.0)

    def delay_seconds(self, failed_attempt: int) -> float:
        """Delay before the attempt after ``failed_attempt`` (1-based)."""
        delay_ms = self.backoffMs * self.backoffMultiplier ** max(failed_attempt - 1, 0)
        if self.jitter:
            delay_ms *= random.uniform(1 - self.jitter, 1 + self.jitter)
        return round(min(delay_ms, self.maxBackoffMs) / 1000.0, 3)


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


class WebhookTriggerConfig(Spec):
    requireSignature: bool = False


class EmailTriggerConfig(Spec):
    #: Only mail from these addresses (or ``@domain``) starts the task; empty: anyone.
    allowedSenders: list[str] = Field(default_factory=list, max_length=100)


class EventTriggerConfig(Spec):
    event: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:\-]+$")
    #: For task.completed / task.failed: only when this task is the source.
    taskId: str | None = Field(default=None, max_length=36)


TRIGGER_CONFIGS: dict[str, type[Spec]] = {
    "webhook": WebhookTriggerConfig,
    "email": EmailTriggerConfig,
    "event": EventTriggerConfig,
}


class Trigger(Spec):
    type: Literal["webhook", "email", "event"]
    config: dict[str, Any] = Field(default_factory=dict)


JSON_PATH = r"(?:[A-Za-z0-9_\-]+|\[\d{1,6}\])(?:\.[A-Za-z0-9_\-]+|\[\d{1,6}\])*"
TIME_OF_DAY = r"^([01]\d|2[0-3]):[0-5]\d$"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class Condition(Spec):
    """One precondition of a run (all must hold, or the execution is ``skipped``).

    ``time``: the local time of day (``field`` "time", value "HH:MM") or weekday (``field``
    "weekday", value "mon".."sun" or a list of them) in the task's timezone. ``variable``:
    the caller's variable named ``field`` (default ``environment``). ``api-response``: a GET
    of ``url`` and the JSON path ``field`` in its answer (the whole body when absent).
    """

    type: Literal["time", "variable", "api-response"]
    operator: Literal["equals", "notEquals", "contains", "greater", "less", "exists"]
    value: Any = None
    field: str | None = Field(default=None, min_length=1, max_length=200)
    url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://[^\s/]+")

    @model_validator(mode="after")
    def _shape(self) -> Condition:
        if self.type == "api-response" and not self.url:
            raise ValueError("an api-response condition needs a url")
        if self.type != "api-response" and self.url:
            raise ValueError("only an api-response condition has a url")
        if self.operator != "exists" and self.value is None:
            raise ValueError(f"the {self.operator} operator needs a value")
        if self.operator == "exists" and self.value not in (None, True, False):
            raise ValueError("exists takes no value, or true / false")
        if self.type == "api-response" and self.field and not re.fullmatch(JSON_PATH, self.field):
            raise ValueError("an api-response field is a JSON path like data.items[0].status")
        if self.type == "time":
            self._check_time()
        return self

    def _check_time(self) -> None:
        kind = self.field or "time"
        if kind == "time":
            if self.operator not in {"equals", "notEquals", "greater", "less"}:
                raise ValueError("a time condition compares with equals, notEquals, greater, less")
            if not isinstance(self.value, str) or not re.match(TIME_OF_DAY, self.value):
                raise ValueError("a time condition's value is a time of day like 09:00")
        elif kind == "weekday":
            days = self.value if isinstance(self.value, list) else [self.value]
            if not days or any(str(day).lower()[:3] not in WEEKDAYS for day in days):
                raise ValueError("a weekday condition's value is mon..sun or a list of them")
            if self.operator not in {"equals", "notEquals", "contains"}:
                raise ValueError("a weekday condition compares with equals, notEquals, contains")
        else:
            raise ValueError("a time condition's field is 'time' or 'weekday'")


class Conditions(BaseModel):
    items: list[Condition] = Field(max_length=50)
