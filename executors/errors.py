"""Errors an executor raises; the class decides whether the retry policy applies."""

from __future__ import annotations


class ExecutorError(Exception):
    """The action could not do its work."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class RetryableError(ExecutorError):
    """A transient failure (timeout, connection refused, 429, 5xx); another attempt may succeed."""


class PermanentError(ExecutorError):
    """A failure another attempt would not fix (bad request, refused address, 4xx)."""


class EgressRefused(PermanentError):
    """The outbound request was refused by the egress policy."""


class ConfigError(ExecutorError):
    """The action's configuration is not valid."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{path or '(action)'}: {msg}" for path, msg in errors))


class UnknownActionType(ExecutorError):
    """No executor is registered for this action type."""


class DuplicateExecutor(ExecutorError):
    """An executor for this action type is already registered."""
