"""The executor plug-in contract: a typed config in, a plain JSON-able result out.

Executors never import ``tasks_app``; everything they need comes in the config and the
:class:`ExecutionContext`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .egress import EgressPolicy
from .errors import ConfigError


class ActionConfig(BaseModel):
    """Base of every action's typed config: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


ConfigT = TypeVar("ConfigT", bound=ActionConfig)


#: Tells our own inbound endpoints (webhooks, events, e-mail) how many triggers deep a
#: request is, so a trigger that feeds itself stops (loop protection).
TRIGGER_DEPTH_HEADER = "X-Scheduler-Trigger-Depth"


class ExecutionHost(Protocol):
    """What the application offers an executor beyond its config (implemented in
    ``tasks_app.services.host``; executors never import ``tasks_app``)."""

    def report_data(self, *, period_days: int) -> dict[str, Any]:
        """The owner's execution figures over the last ``period_days`` days."""
        ...

    def save_report(self, *, title: str, html: str, markdown: str) -> dict[str, Any]:
        """Store a rendered report; returns ``{"reportId", "url", ...}``."""
        ...

    def google_credentials(self) -> dict[str, Any] | None:
        """The owner's stored Google credentials (decrypted), or None."""
        ...


@dataclass(frozen=True)
class ExecutionContext:
    task_id: str
    execution_id: str
    attempt: int
    idempotency_key: str
    log: Callable[[str], None]
    egress: EgressPolicy = field(default_factory=EgressPolicy)
    variables: Mapping[str, Any] = field(default_factory=dict)
    #: The result of the previous step of a chain (None for a first or single step).
    previous_result: Any = None
    #: The owner's own directory under SCHEDULER_DATA_DIR (file operations stay inside it).
    files_root: Path | None = None
    task_name: str = ""
    #: Seconds this attempt may still run (the Celery soft time limit minus what is spent).
    time_budget: float = 600.0
    host: ExecutionHost | None = None
    #: How many triggers led to this run; outbound requests carry it (loop protection).
    trigger_depth: int = 0


def chained_text(ctx: ExecutionContext) -> str | None:
    """The previous step's result as text: a string as is, anything else as JSON (None
    when there is no previous result)."""
    value = ctx.previous_result
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, indent=2, default=str)


@dataclass(frozen=True)
class ActionResult:
    output: Any
    meta: Mapping[str, Any] = field(default_factory=dict)


def error_path(loc: tuple[int | str, ...]) -> str:
    """('tasks', 2, 'url') -> 'tasks[2].url'."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


class Executor(ABC, Generic[ConfigT]):
    """One action type. Subclasses set ``action_type`` and ``Config``, and implement ``execute``."""

    action_type: ClassVar[str]
    Config: ClassVar[type[ActionConfig]]

    def validate(self, raw: Mapping[str, Any]) -> ConfigT:
        try:
            return self.Config.model_validate(dict(raw))  # type: ignore[return-value]
        except ValidationError as exc:
            raise ConfigError(
                [(error_path(err["loc"]), err["msg"]) for err in exc.errors()]
            ) from None

    @abstractmethod
    def execute(self, config: ConfigT, ctx: ExecutionContext) -> ActionResult:
        """Do the work; raise RetryableError or PermanentError on failure."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.action_type}>"
