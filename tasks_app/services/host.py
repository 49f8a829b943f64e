"""What an executor gets from the application: its context, its template scope, and a
host for report data, report storage and the owner's Google credentials."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.utils import timezone

from executors.base import ExecutionContext

from ..conf import scheduler_settings
from ..models import GoogleCredential, ScheduledTask, TaskExecution


def owner_files_root(owner_id: int) -> Path:
    """The owner's own directory; file operations and attachments stay inside it."""
    return Path(settings.SCHEDULER_FILES_DIR).resolve() / f"user-{owner_id}"


class Host:
    def __init__(self, execution: TaskExecution) -> None:
        self.execution = execution

    def report_data(self, *, period_days: int) -> dict[str, Any]:
        from .reports import report_data

        return report_data(
            owner=self.execution.task.owner,
            period_days=period_days,
            exclude_execution_id=str(self.execution.pk),
        )

    def save_report(self, *, title: str, html: str, markdown: str) -> dict[str, Any]:
        from .reports import report_save

        return report_save(execution=self.execution, title=title, html=html, markdown=markdown)

    def google_credentials(self) -> dict[str, Any] | None:
        row = GoogleCredential.objects.filter(owner_id=self.execution.task.owner_id).first()
        credentials: Any = None if row is None else row.credentials
        return credentials


def template_scope(
    execution: TaskExecution, *, previous_result: Any = None, step: int | None = None
) -> dict[str, Any]:
    """The names a template may use; plain JSON data only."""
    task: ScheduledTask = execution.task
    local_now = timezone.now().astimezone(ZoneInfo(task.timezone))
    scope: dict[str, Any] = {
        "task": {"id": str(task.pk), "name": task.name, "description": task.description},
        "execution": {
            "id": str(execution.pk),
            "trigger": execution.trigger,
            "scheduledFor": execution.scheduled_for.isoformat()
            if execution.scheduled_for
            else None,
            "attempt": execution.attempt,
            "step": step,
        },
        "now": local_now.isoformat(),
        "previous_result": previous_result,
    }
    if execution.payload is not None:
        scope[f"{execution.trigger}_payload"] = execution.payload
        if execution.trigger == "email":
            scope["email"] = execution.payload
    return scope


def execution_context(
    execution: TaskExecution,
    *,
    log: Callable[[str], None],
    attempt: int,
    previous_result: Any = None,
    step: int | None = None,
) -> ExecutionContext:
    conf = scheduler_settings()
    key = str(execution.pk) if step is None else f"{execution.pk}:{step}"
    scope = template_scope(execution, previous_result=previous_result, step=step)
    return ExecutionContext(
        task_id=str(execution.task_id),
        execution_id=str(execution.pk),
        attempt=attempt,
        idempotency_key=key,
        log=log,
        egress=conf.egress_policy(),
        variables=scope,
        previous_result=previous_result,
        files_root=owner_files_root(execution.task.owner_id),
        task_name=execution.task.name,
        time_budget=float(settings.CELERY_TASK_SOFT_TIME_LIMIT),
        host=Host(execution),
        trigger_depth=execution.trigger_depth,
    )
