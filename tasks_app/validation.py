"""Structural validation of a task definition, with errors keyed by the guide's paths.

Used by the model's ``clean()`` (so the admin and every service path share it). Rules
that depend on the moment of the request (``schedule.at`` in the future) live with the
request, not here, because a stored one-time task's time is eventually in the past.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ValidationError
from django.utils import timezone
from pydantic import BaseModel
from pydantic import ValidationError as PydanticError

import executors
from executors.base import error_path
from executors.errors import ConfigError

from . import cron as cronlib
from . import sealed
from .models import ActionType, MisfirePolicy, OverlapPolicy, TaskType
from .specs import TRIGGER_CONFIGS, Conditions, Notification, RetryPolicy, Trigger

if TYPE_CHECKING:
    from .models import ScheduledTask


class Errors:
    def __init__(self) -> None:
        self.by_path: dict[str, list[str]] = defaultdict(list)

    def add(self, path: str, message: str) -> None:
        self.by_path[path].append(message)

    def spec(self, prefix: str, model: type[BaseModel], value: Any) -> None:
        try:
            model.model_validate(value)
        except PydanticError as exc:
            for err in exc.errors():
                self.add(_join(prefix, error_path(err["loc"])), err["msg"])

    def raise_if_any(self) -> None:
        if self.by_path:
            raise ValidationError({path: msgs for path, msgs in self.by_path.items()})


def _join(prefix: str, path: str) -> str:
    if not path:
        return prefix
    return f"{prefix}{path}" if path.startswith("[") else f"{prefix}.{path}"


def validate_action(action: Any, errors: Errors, prefix: str = "action") -> None:
    if not isinstance(action, dict):
        errors.add(prefix, "must be an object with a 'type'")
        return
    action_type = action.get("type")
    if action_type not in ActionType.values:
        errors.add(f"{prefix}.type", f"must be one of {', '.join(ActionType.values)}")
    elif action_type not in executors.registry:
        errors.add(f"{prefix}.type", f"action type {action_type!r} is not available yet")
    else:
        try:
            executors.registry.get(action_type).validate(action)
        except ConfigError as exc:
            for path, message in exc.errors:
                errors.add(_join(prefix, path), message)


#: Bounds of the schedule's controls (seconds).
CATCHUP_WINDOW = (60, 7 * 86_400)
#: Jitter stays well under the broker's visibility timeout (countdown messages).
MAX_JITTER = 900
GRACE = (30, 7 * 86_400)


def _seconds(errors: Errors, path: str, value: Any, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        errors.add(path, f"must be a whole number of seconds from {low} to {high}")


def _validate_schedule_options(task: ScheduledTask, errors: Errors) -> None:
    if task.misfire_policy not in MisfirePolicy.values:
        errors.add("schedule.misfirePolicy", f"must be one of {', '.join(MisfirePolicy.values)}")
    if task.overlap_policy not in OverlapPolicy.values:
        errors.add("schedule.overlapPolicy", f"must be one of {', '.join(OverlapPolicy.values)}")
    _seconds(errors, "schedule.catchupWindowSeconds", task.catchup_window_seconds, *CATCHUP_WINDOW)
    _seconds(errors, "schedule.jitterSeconds", task.jitter_seconds, 0, MAX_JITTER)
    if task.grace_seconds is not None:
        _seconds(errors, "schedule.graceSeconds", task.grace_seconds, *GRACE)
    for path, value in (("schedule.startAt", task.start_at), ("schedule.endAt", task.end_at)):
        if value is None:
            continue
        if not (isinstance(value, datetime) and timezone.is_aware(value)):
            errors.add(path, "must be a date and time with a timezone offset")
        elif task.type != TaskType.RECURRING:
            errors.add(path, "only a recurring task has a window")
    window = (task.start_at, task.end_at)
    if all(isinstance(v, datetime) and timezone.is_aware(v) for v in window):
        if task.end_at <= task.start_at:  # type: ignore[operator]
            errors.add("schedule.endAt", "must be after schedule.startAt")
    if task.type == TaskType.TRIGGER:
        defaults = (
            task.misfire_policy == MisfirePolicy.RUN_ONCE
            and task.overlap_policy == OverlapPolicy.SKIP
            and task.jitter_seconds == 0
            and task.grace_seconds is None
        )
        if not defaults:
            errors.add("schedule", "a trigger task has no schedule controls")


def validate_task(task: ScheduledTask) -> None:
    errors = Errors()
    if not isinstance(task.name, str) or not task.name.strip():
        errors.add("name", "is required")
    elif len(task.name) > 200:
        errors.add("name", "must be at most 200 characters")
    if not isinstance(task.description, str) or len(task.description) > 10_000:
        errors.add("description", "must be a string of at most 10000 characters")
    if task.type not in TaskType.values:
        errors.add("type", f"must be one of {', '.join(TaskType.values)}")
    try:
        cronlib.validate_timezone(task.timezone)
    except cronlib.CronError as exc:
        errors.add("schedule.timezone", str(exc))
    if task.type == TaskType.RECURRING:
        if not task.cron:
            errors.add("schedule.cron", "is required for a recurring task")
        elif "schedule.timezone" not in errors.by_path:
            try:
                task.cron = cronlib.parse(task.cron, task.timezone).expression
            except cronlib.CronError as exc:
                errors.add("schedule.cron", str(exc))
    elif task.cron:
        errors.add("schedule.cron", "only a recurring task has a cron")
    if task.type == TaskType.ONE_TIME and task.run_at is None:
        errors.add("schedule.at", "is required for a one-time task")
    elif task.run_at is not None and not (
        isinstance(task.run_at, datetime) and timezone.is_aware(task.run_at)
    ):
        errors.add("schedule.at", "must be a date and time with a timezone offset")
    _validate_schedule_options(task, errors)
    if task.type == TaskType.TRIGGER:
        if task.trigger is None:
            errors.add("trigger", "is required for a trigger task")
        else:
            errors.spec("trigger", Trigger, task.trigger)
            kind = task.trigger.get("type") if isinstance(task.trigger, dict) else None
            trigger_ok = not any(path.startswith("trigger") for path in errors.by_path)
            if trigger_ok and kind in TRIGGER_CONFIGS:
                config = task.trigger.get("config", {})
                errors.spec("trigger.config", TRIGGER_CONFIGS[kind], config)
    elif task.trigger is not None:
        errors.add("trigger", "only a trigger task has a trigger")
    validate_action(sealed.for_validation(task.action), errors)
    errors.spec("retryPolicy", RetryPolicy, task.retry_policy or {})
    errors.spec("notification", Notification, task.notification or {})
    if not isinstance(task.conditions, list):
        errors.add("conditions", "must be a list")
    else:
        try:
            Conditions.model_validate({"items": task.conditions})
        except PydanticError as exc:
            for err in exc.errors():
                errors.add(_join("conditions", error_path(err["loc"][1:])), err["msg"])
    errors.raise_if_any()
