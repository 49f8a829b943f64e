"""Make what actions return storable on every database: JSON that PostgreSQL's jsonb and
text columns accept (no NaN or Infinity, no NUL characters, no lone surrogates), bounded
in depth. An action's output is data from the outside world; storing it must not fail
after the side effect has happened."""

from __future__ import annotations

import math
from typing import Any

from django.utils import timezone

MAX_DEPTH = 64


def log_entry(message: str, level: str = "info") -> dict[str, str]:
    """One line of an execution's log, as it is stored."""
    return {"at": timezone.now().isoformat(), "level": level, "message": storable_text(message)}


def storable_text(value: str) -> str:
    return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def storable(value: Any, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        return "(nested too deep to store)"
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable_text(str(k)): storable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(item, depth + 1) for item in value]
    return storable_text(str(value))


def unstorable(value: Any, path: str = "", depth: int = 0) -> tuple[str, str] | None:
    """The first place in request JSON that a database could not store, and why."""
    if depth > MAX_DEPTH:
        return path or "(body)", f"is nested more than {MAX_DEPTH} levels deep"
    if isinstance(value, float) and not math.isfinite(value):
        return path or "(body)", "must be a finite number"
    if isinstance(value, str):
        return _bad_text(value, path)
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            found = _bad_text(str(key), where) or unstorable(item, where, depth + 1)
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = unstorable(item, f"{path}[{index}]", depth + 1)
            if found:
                return found
    return None


def _bad_text(value: str, path: str) -> tuple[str, str] | None:
    if "\x00" in value:
        return path or "(body)", "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return path or "(body)", "must not contain unpaired surrogates"
    return None
