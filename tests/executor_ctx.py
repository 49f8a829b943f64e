"""The ExecutionContext that executor tests run with."""

from __future__ import annotations

from typing import Any

from executors.base import ExecutionContext
from executors.egress import EgressPolicy

#: Loopback allowed (the tests' HTTP receiver) with a short timeout.
LOOPBACK = EgressPolicy(allow=("127.0.0.1",), timeout=5.0)


def make_ctx(logs: list[str] | None = None, **overrides: Any) -> tuple[ExecutionContext, list[str]]:
    """A context for task ``task-1``, execution ``exec-1`` (also its idempotency key),
    attempt 1, whose log lines go to ``logs`` (a new list unless given); any field can
    be overridden. Returns the context and that list."""
    lines: list[str] = [] if logs is None else logs
    fields: dict[str, Any] = {
        "task_id": "task-1",
        "execution_id": "exec-1",
        "attempt": 1,
        "idempotency_key": "exec-1",
        "log": lines.append,
        **overrides,
    }
    return ExecutionContext(**fields), lines
