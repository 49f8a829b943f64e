"""chain: steps that run one after another, each as its own Celery task (the canvas
chain is built by ``tasks_app.services.chains``); this module validates and flattens.

Steps are validated recursively, each by its own executor, with errors at
``tasks[2].url``. A chain inside a chain is allowed up to ``MAX_DEPTH`` and runs
flattened: its steps take their place in the parent's sequence, so
``{previous_result}`` flows through them unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field

from .base import ActionConfig, ActionResult, ExecutionContext, Executor
from .errors import ConfigError, PermanentError, UnknownActionType

MAX_DEPTH = 3
MAX_STEPS = 20


class ChainConfig(ActionConfig):
    type: Literal["chain"]
    tasks: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_STEPS)


class ChainExecutor(Executor[ChainConfig]):
    action_type: ClassVar[str] = "chain"
    Config = ChainConfig

    def validate(self, raw: Mapping[str, Any], depth: int = 1) -> ChainConfig:
        config = super().validate(raw)
        if depth > MAX_DEPTH:
            raise ConfigError([("tasks", f"chains nest at most {MAX_DEPTH} deep")])
        if len(flatten(config.tasks)) > MAX_STEPS:
            raise ConfigError([("tasks", f"a chain has at most {MAX_STEPS} steps in all")])
        errors: list[tuple[str, str]] = []
        for index, step in enumerate(config.tasks):
            errors.extend(_step_errors(step, index, depth))
        if errors:
            raise ConfigError(errors)
        return config

    def execute(self, config: ChainConfig, ctx: ExecutionContext) -> ActionResult:
        raise PermanentError("a chain runs as a Celery canvas chain, one task per step")


def _step_errors(step: Any, index: int, depth: int) -> list[tuple[str, str]]:
    from .registry import registry

    prefix = f"tasks[{index}]"
    if not isinstance(step, dict):
        return [(prefix, "must be an object with a 'type'")]
    try:
        executor = registry.get(str(step.get("type")))
    except UnknownActionType:
        available = ", ".join(registry)
        return [(f"{prefix}.type", f"must be one of {available}")]
    try:
        if isinstance(executor, ChainExecutor):
            executor.validate(step, depth + 1)
        else:
            executor.validate(step)
    except ConfigError as exc:
        return [(f"{prefix}.{path}" if path else prefix, message) for path, message in exc.errors]
    return []


def flatten(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The steps of a chain with nested chains inlined."""
    flat: list[dict[str, Any]] = []
    for step in steps:
        if isinstance(step, dict) and step.get("type") == "chain":
            flat.extend(flatten(step.get("tasks") or []))
        else:
            flat.append(step)
    return flat
