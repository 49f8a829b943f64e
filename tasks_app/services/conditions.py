"""Preconditions of a run: all must hold, or the execution is ``skipped`` with the reason.

``time`` reads the clock in the task's timezone; ``variable`` reads the owner's named
variables; ``api-response`` GETs a URL through the egress module and reads a JSON path.
An api-response that cannot be fetched is a retryable failure (the retry policy
applies), not a skip: nobody knows yet whether the condition holds.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from executors import egress
from executors.errors import PermanentError, RetryableError
from executors.templating import MISSING, lookup

from ..models import ScheduledTask, UserVariable
from ..specs import WEEKDAYS, Condition

DEFAULT_VARIABLE = "environment"
JSON_PATH = re.compile(r"(?:\.[A-Za-z0-9_\-]+|\[\d{1,6}\])+")


def conditions_unmet(
    *, task: ScheduledTask, now: datetime, policy: egress.EgressPolicy, log: Any
) -> str | None:
    """The reason the first unmet condition gives, or None when all hold."""
    for index, raw in enumerate(task.conditions or []):
        condition = Condition.model_validate(raw)
        actual = _actual(condition, task=task, now=now, policy=policy)
        if not _holds(condition, actual):
            shown = "absent" if actual is MISSING else repr(actual)[:200]
            return (
                f"condition {index + 1} not met: {_subject(condition)} {condition.operator} "
                f"{condition.value!r} (actual: {shown})"
            )
        log(f"condition {index + 1} met: {_subject(condition)} {condition.operator}")
    return None


def _subject(condition: Condition) -> str:
    if condition.type == "time":
        return f"local {condition.field or 'time'}"
    if condition.type == "variable":
        return f"variable {condition.field or DEFAULT_VARIABLE!r}"
    return f"{egress.redact(condition.url or '')} {condition.field or '(body)'}"


def _actual(condition: Condition, *, task: ScheduledTask, now: datetime, policy: Any) -> Any:
    if condition.type == "time":
        local = now.astimezone(ZoneInfo(task.timezone))
        if (condition.field or "time") == "weekday":
            return WEEKDAYS[local.weekday()]
        return local.strftime("%H:%M")
    if condition.type == "variable":
        name = condition.field or DEFAULT_VARIABLE
        row = UserVariable.objects.filter(owner_id=task.owner_id, name=name).first()
        return MISSING if row is None else row.value
    return _api_value(condition, policy)


def _api_value(condition: Condition, policy: egress.EgressPolicy) -> Any:
    assert condition.url is not None
    response = egress.request("GET", condition.url, policy)
    if response.status == 429 or response.status >= 500:
        raise RetryableError(f"condition URL answered HTTP {response.status}")
    if not 200 <= response.status < 300:
        raise PermanentError(f"condition URL answered HTTP {response.status}")
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if not condition.field:
        return body
    path = condition.field if condition.field.startswith("[") else f".{condition.field}"
    if not JSON_PATH.fullmatch(path):
        return MISSING
    return lookup({"body": body}, "body", path)


def _holds(condition: Condition, actual: Any) -> bool:
    op, expected = condition.operator, condition.value
    if op == "exists":
        present = actual is not MISSING and actual is not None
        return present if expected is not False else not present
    if actual is MISSING:
        return op == "notEquals"
    if condition.type == "time" and condition.field == "weekday":
        days = {
            str(day).lower()[:3] for day in (expected if isinstance(expected, list) else [expected])
        }
        return (actual in days) != (op == "notEquals")
    if op in {"equals", "notEquals"}:
        return (_same(actual, expected)) != (op == "notEquals")
    if op == "contains":
        if isinstance(actual, str):
            return str(expected) in actual
        if isinstance(actual, list):
            return any(_same(item, expected) for item in actual)
        if isinstance(actual, dict):
            return isinstance(expected, str) and expected in actual
        return False
    return _compare(actual, expected, greater=op == "greater")


def _same(actual: Any, expected: Any) -> bool:
    """Equal, where a number and its decimal text count as the same value either way."""
    for number, text in ((actual, expected), (expected, actual)):
        if (
            isinstance(number, int | float)
            and not isinstance(number, bool)
            and isinstance(text, str)
        ):
            try:
                return float(text) == number
            except ValueError:
                return False
    return bool(actual == expected)


def _compare(actual: Any, expected: Any, *, greater: bool) -> bool:
    try:
        left, right = float(actual), float(expected)
    except (TypeError, ValueError):
        if not (isinstance(actual, str) and isinstance(expected, str)):
            return False
        left, right = actual, expected  # type: ignore[assignment]  # "HH:MM" compares as text
    return left > right if greater else left < right
