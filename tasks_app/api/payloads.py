"""The guide's task JSON, both ways: camelCase in and out, errors keyed by field path."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User

from .. import cron as cronlib
from .. import sealed
from ..models import JSON_FIELDS, ScheduledTask, TaskExecution, TaskType
from ..services.inbound_email import task_email_address
from ..storable import unstorable

READ_ONLY = {
    *("id", "status", "lastRun", "nextRun", "runCount", "createdAt", "updatedAt"),
    "emailAddress",
    "pauseReason",
}
SCHEDULE_KEYS = {"cron", "timezone", "at"}
#: The schedule's controls: JSON name -> model field (and their defaults, in the model).
SCHEDULE_OPTIONS = {
    "misfirePolicy": "misfire_policy",
    "catchupWindowSeconds": "catchup_window_seconds",
    "overlapPolicy": "overlap_policy",
    "jitterSeconds": "jitter_seconds",
    "startAt": "start_at",
    "endAt": "end_at",
    "graceSeconds": "grace_seconds",
}
SCHEDULE_TIMES = {"startAt", "endAt"}
SCHEDULE_INTEGERS = {"catchupWindowSeconds", "jitterSeconds", "graceSeconds"}


class PayloadError(Exception):
    def __init__(self, errors: dict[str, list[str]], status: int = 400) -> None:
        self.errors = errors
        self.status = status
        super().__init__(errors)


def _iso(value: datetime | None) -> str | None:
    """Times go out in UTC, with their offset."""
    return value.astimezone(UTC).isoformat() if value else None


def task_to_json(task: ScheduledTask, *, reveal_secrets: bool = False) -> dict[str, Any]:
    """The task as the API shows it; secret action headers masked, except in the answer
    to the request that created the task (``reveal_secrets``): never again after that."""
    schedule: dict[str, Any] | None = None
    if task.type == TaskType.RECURRING:
        schedule = {"cron": task.cron, "timezone": task.timezone, **schedule_options(task)}
    elif task.type == TaskType.ONE_TIME:
        schedule = {
            "at": _iso(task.run_at),
            "timezone": task.timezone,
            **schedule_options(task, ("misfirePolicy", "jitterSeconds")),
        }
    return {
        "id": str(task.pk),
        "userId": task.owner.get_username(),
        "name": task.name,
        "description": task.description,
        "type": task.type,
        "schedule": schedule,
        "trigger": task.trigger,
        "emailAddress": task_email_address(task),
        "action": sealed.unsealed(task.action) if reveal_secrets else sealed.masked(task.action),
        "conditions": task.conditions,
        "retryPolicy": task.retry_policy,
        "notification": task.notification,
        "status": task.status,
        "pauseReason": task.pause_reason or None,
        "lastRun": _iso(task.last_run),
        "nextRun": _iso(task.next_run),
        "runCount": task.run_count,
        "createdAt": _iso(task.created_at),
        "updatedAt": _iso(task.updated_at),
    }


def schedule_options(task: ScheduledTask, keys: Any = SCHEDULE_OPTIONS) -> dict[str, Any]:
    """The schedule's controls that differ from their defaults (as retryPolicy, the task
    says what was asked of it; the defaults are in the API reference)."""
    options: dict[str, Any] = {}
    for key in keys:
        field = ScheduledTask._meta.get_field(SCHEDULE_OPTIONS[key])
        value = getattr(task, field.name)
        if value != field.get_default():  # type: ignore[union-attr]
            options[key] = _iso(value) if key in SCHEDULE_TIMES else value
    return options


def execution_to_json(execution: TaskExecution, *, logs: bool = True) -> dict[str, Any]:
    data = {
        "id": str(execution.pk),
        "taskId": str(execution.task_id),
        "status": execution.status,
        "trigger": execution.trigger,
        "scheduledFor": _iso(execution.scheduled_for),
        "startedAt": _iso(execution.started_at),
        "completedAt": _iso(execution.completed_at),
        "durationMs": execution.duration_ms,
        "attempt": execution.attempt,
        "result": execution.result,
        "error": execution.error or None,
        "usage": {"inputTokens": execution.input_tokens, "outputTokens": execution.output_tokens},
        "steps": execution.steps,
    }
    if logs:
        data["logs"] = execution.logs
    return data


def parse_owner(data: Any, caller: User) -> User:
    """``userId`` names the owner: yourself, or anyone when you are staff."""
    name = data.get("userId") if isinstance(data, dict) else None
    if name is None or name == caller.get_username():
        return caller
    if not isinstance(name, str):
        raise PayloadError({"userId": ["must be a user name"]})
    if not caller.is_staff:
        raise PayloadError({"userId": ["only staff may act for another user"]}, status=403)
    owner = get_user_model().objects.filter(username=name).first()
    if owner is None:
        raise PayloadError({"userId": [f"no user named {name!r}"]})
    return owner


def parse_task(data: Any, *, task: ScheduledTask | None = None) -> dict[str, Any]:
    """Model field values from a request body (for an update, only what it names)."""
    if not isinstance(data, dict):
        raise PayloadError({"(body)": ["must be a JSON object"]})
    bad = unstorable(data)
    if bad:
        raise PayloadError({bad[0]: [bad[1]]})
    errors: dict[str, list[str]] = {}
    for key in set(data) - set(JSON_FIELDS) - READ_ONLY - {"schedule", "userId"}:
        errors[str(key)] = ["unknown field"]
    fields = {JSON_FIELDS[key]: value for key, value in data.items() if key in JSON_FIELDS}
    task_type = fields.get("type", task.type if task else None)
    schedule = data.get("schedule")
    if "schedule" in data:
        fields.update(parse_schedule(schedule, task, errors))
    # Parts that belong to another type of task are cleared when the type changes.
    given = schedule if isinstance(schedule, dict) else {}
    if task_type != TaskType.RECURRING and "cron" not in given:
        fields["cron"] = ""
    if task_type != TaskType.ONE_TIME and "at" not in given:
        fields["run_at"] = None
    if task_type != TaskType.TRIGGER and "trigger" not in data:
        fields["trigger"] = None
    if task_type != TaskType.RECURRING:
        # Window and lateness belong to recurring schedules only.
        for key in ("startAt", "endAt", "graceSeconds"):
            if key not in given:
                fields[SCHEDULE_OPTIONS[key]] = None
    if task_type == TaskType.TRIGGER:
        defaults = {"misfirePolicy": "runOnce", "overlapPolicy": "skip", "jitterSeconds": 0}
        for key, value in defaults.items():
            if key not in given:
                fields[SCHEDULE_OPTIONS[key]] = value
    if errors:
        raise PayloadError(errors)
    return fields


def parse_schedule(
    schedule: Any, task: ScheduledTask | None, errors: dict[str, list[str]]
) -> dict[str, Any]:
    if schedule is None:
        return {}
    if not isinstance(schedule, dict):
        errors["schedule"] = ["must be an object"]
        return {}
    for key in set(schedule) - SCHEDULE_KEYS - set(SCHEDULE_OPTIONS):
        errors[f"schedule.{key}"] = ["unknown field"]
    fields: dict[str, Any] = {}
    if "cron" in schedule:
        fields["cron"] = schedule["cron"] if isinstance(schedule["cron"], str) else None
        if fields["cron"] is None:
            errors["schedule.cron"] = ["must be a string of 5 fields, such as '0 9 * * 1-5'"]
    zone = schedule.get("timezone", task.timezone if task else "UTC")
    if "timezone" in schedule:
        fields["timezone"] = zone
    if "at" in schedule:
        fields["run_at"] = _parse_at(schedule["at"], zone, errors)
    for key, field in SCHEDULE_OPTIONS.items():
        if key not in schedule:
            continue
        value = schedule[key]
        path = f"schedule.{key}"
        if key in SCHEDULE_TIMES:
            fields[field] = None if value is None else _parse_at(value, zone, errors, path)
        elif key in SCHEDULE_INTEGERS:
            nullable = key == "graceSeconds"
            if (value is None and nullable) or (
                isinstance(value, int) and not isinstance(value, bool)
            ):
                fields[field] = value
            else:
                errors[path] = ["must be a whole number of seconds"]
        elif isinstance(value, str):
            fields[field] = value
        else:
            errors[path] = ["must be a string"]
    return fields


def _parse_at(
    value: Any, zone: Any, errors: dict[str, list[str]], path: str = "schedule.at"
) -> datetime | None:
    if not isinstance(value, str):
        errors[path] = ["must be an ISO 8601 date and time"]
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        errors[path] = [f"{value!r} is not an ISO 8601 date and time"]
        return None
    if moment.tzinfo is None:
        try:
            moment = moment.replace(tzinfo=ZoneInfo(cronlib.validate_timezone(zone)))
        except cronlib.CronError:
            return None  # schedule.timezone reports the problem
    return moment
