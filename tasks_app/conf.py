"""Typed access to the SCHEDULER_* settings and the stable Celery task names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings

if TYPE_CHECKING:  # executors (pydantic, requests) load on first use: beat never runs one
    from executors.egress import EgressPolicy

# Stable names: beat rows store them as strings, so never rename.
RUN_TASK_NAME = "tasks_app.run_task"
RECOVER_TASK_NAME = "tasks_app.recover_executions"
LATE_CHECK_TASK_NAME = "tasks_app.check_late_tasks"
CLEANUP_TASK_NAME = "tasks_app.cleanup_executions"
RUN_STEP_NAME = "tasks_app.run_step"
NOTIFY_TASK_NAME = "tasks_app.notify_execution"
BEAT_ENTRY_PREFIX = "scheduled-task:"


def runs_ignore_result() -> bool:
    """Whether run_task and run_step leave no Celery result (unless
    SCHEDULER_CELERY_RESULTS): the tasks say it, and so does every run message, since beat
    and the web server send them by name without the task (a result backend that waits
    for results, such as Redis, would otherwise subscribe to each one)."""
    return not settings.SCHEDULER_CELERY_RESULTS


@dataclass(frozen=True)
class SchedulerSettings:
    task_time_limit: int
    lease_grace: int
    max_deliveries: int
    requeue_after: int
    egress_allow: tuple[str, ...]
    egress_timeout: int
    egress_max_bytes: int

    @property
    def lease_seconds(self) -> int:
        return self.task_time_limit + self.lease_grace

    def egress_policy(self) -> EgressPolicy:
        from executors.egress import EgressPolicy

        return EgressPolicy(
            allow=self.egress_allow,
            timeout=float(self.egress_timeout),
            max_bytes=self.egress_max_bytes,
        )


def scheduler_settings() -> SchedulerSettings:
    return SchedulerSettings(
        task_time_limit=settings.SCHEDULER_TASK_TIME_LIMIT,
        lease_grace=settings.SCHEDULER_LEASE_GRACE,
        max_deliveries=settings.SCHEDULER_MAX_DELIVERIES,
        requeue_after=settings.SCHEDULER_REQUEUE_AFTER,
        egress_allow=tuple(settings.SCHEDULER_EGRESS_ALLOW),
        egress_timeout=settings.SCHEDULER_EGRESS_TIMEOUT,
        egress_max_bytes=settings.SCHEDULER_EGRESS_MAX_BYTES,
    )
