"""Action type -> executor. Registration is explicit and refuses duplicates."""

from __future__ import annotations

from collections.abc import Iterator

from .base import Executor
from .errors import DuplicateExecutor, UnknownActionType


class Registry:
    def __init__(self) -> None:
        self._executors: dict[str, Executor] = {}

    def register(self, executor: Executor) -> Executor:
        action_type = getattr(executor, "action_type", None)
        if not action_type:
            raise TypeError(f"{executor!r} has no action_type")
        existing = self._executors.get(action_type)
        if existing is not None:
            raise DuplicateExecutor(
                f"action type {action_type!r} is already handled by {existing!r}; "
                f"refusing {executor!r}"
            )
        self._executors[action_type] = executor
        return executor

    def get(self, action_type: str) -> Executor:
        try:
            return self._executors[action_type]
        except KeyError:
            available = ", ".join(sorted(self._executors)) or "none"
            raise UnknownActionType(
                f"no executor for action type {action_type!r} (available: {available})"
            ) from None

    def __contains__(self, action_type: object) -> bool:
        return action_type in self._executors

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._executors))


registry = Registry()
