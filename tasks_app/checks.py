"""System checks: every action type has an executor (or is announced as planned), and
the broker can never redeliver a message whose task may still be running."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from .models import ActionType

# Action types whose executors arrive in their own issue; creating one answers
# "not available yet". Remove a type from here when its executor is registered.
PLANNED_ACTION_TYPES: frozenset[str] = frozenset()


@register(Tags.compatibility)
def check_executors(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    import executors  # on first check: a process that skips checks (beat) never loads them

    problems: list[Any] = []
    for action_type in ActionType.values:
        registered = action_type in executors.registry
        if not registered and action_type not in PLANNED_ACTION_TYPES:
            problems.append(
                Error(
                    f"action type {action_type!r} has no executor",
                    hint="register one in executors/__init__.py",
                    id="tasks_app.E001",
                )
            )
        if registered and action_type in PLANNED_ACTION_TYPES:
            problems.append(
                Warning(
                    f"action type {action_type!r} is registered but still listed as planned",
                    hint="remove it from PLANNED_ACTION_TYPES",
                    id="tasks_app.W001",
                )
            )
    for action_type in executors.registry:
        if action_type not in ActionType.values:
            problems.append(
                Error(
                    f"executor registered for unknown action type {action_type!r}",
                    id="tasks_app.E002",
                )
            )
    return problems


@register()
def check_time_limits(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    options: dict[str, Any] = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    visibility: int | None = options.get("visibility_timeout")
    lease = settings.SCHEDULER_TASK_TIME_LIMIT + settings.SCHEDULER_LEASE_GRACE
    if visibility is not None and lease >= visibility:
        return [
            Error(
                f"SCHEDULER_TASK_TIME_LIMIT + SCHEDULER_LEASE_GRACE ({lease}s) must be below the "
                f"broker's visibility timeout ({visibility}s)",
                hint="raise CELERY_VISIBILITY_TIMEOUT or lower SCHEDULER_TASK_TIME_LIMIT",
                id="tasks_app.E003",
            )
        ]
    return []


@register()
def check_beat_lead(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """Beat decides a due run SCHEDULER_BEAT_LEAD_MS ahead; an edit saved within that
    time applies only from the next occurrence, so it stays within a second."""
    lead = settings.SCHEDULER_BEAT_LEAD_MS
    if not 0 <= lead <= 1000:
        return [
            Error(
                f"SCHEDULER_BEAT_LEAD_MS ({lead}) must be between 0 and 1000",
                hint="an edit saved within the lead before an occurrence applies from the "
                "next one; 100 (the default) leaves the database 100 ms to record a run",
                id="tasks_app.E004",
            )
        ]
    return []
