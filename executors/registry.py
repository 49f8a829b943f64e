"""Action type -> executor. Registration is explicit and refuses duplicates."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from .base import Executor
from .errors import DuplicateExecutor, UnknownActionType


class Registry:
    def __init__(self) -> None:
        self._executors: dict[str, Executor] = {}
        self._pending: Callable[[], None] | None = None

    def defer(self, load: Callable[[], None]) -> None:
        """Register through ``load`` when the registry is first used, so a process that
        never runs or validates an action (beat) does not import every executor."""
        self._pending = load

    def _load(self) -> dict[str, Executor]:
        load, self._pending = self._pending, None
        if load is not None:
            load()
        return self._executors

    def register(self, executor: Executor) -> Executor:
        self._load()
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
            return self._load()[action_type]
        except KeyError:
            available = ", ".join(sorted(self._executors)) or "none"
            raise UnknownActionType(
                f"no executor for action type {action_type!r} (available: {available})"
            ) from None

    def __contains__(self, action_type: object) -> bool:
        return action_type in self._load()

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._load()))


registry = Registry()
