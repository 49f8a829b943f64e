"""Publishing run messages: always after the surrounding transaction commits."""

from __future__ import annotations

from typing import Any

from celery import current_app
from django.db import transaction
from django.utils import timezone

from ..conf import RUN_TASK_NAME, runs_ignore_result
from ..models import ExecutionStatus, ExecutionTrigger, ScheduledTask, TaskExecution


def execution_publish(*, execution: TaskExecution, attempt: int) -> None:
    """Send a run message for ``attempt`` once the current transaction has committed."""
    TaskExecution.objects.filter(pk=execution.pk).update(enqueued_at=timezone.now())
    _send_after_commit(execution=execution, attempt=attempt)


def _send_after_commit(*, execution: TaskExecution, attempt: int) -> None:
    kwargs = {"execution_id": str(execution.pk), "attempt": attempt}
    ignore_result = runs_ignore_result()
    # robust: a broker that is down must not fail the committed request; the execution
    # stays queued and the recovery job publishes it later.
    transaction.on_commit(
        lambda: current_app.send_task(RUN_TASK_NAME, kwargs=kwargs, ignore_result=ignore_result),
        robust=True,
    )


def task_run_now(
    *, task: ScheduledTask, trigger: str = ExecutionTrigger.MANUAL, payload: Any = None
) -> TaskExecution:
    """Queue one execution of ``task`` outside its schedule (run now, webhook, event)."""
    with transaction.atomic():
        # Published as it is made: enqueued_at in the INSERT, not in a second statement.
        execution = TaskExecution.objects.create(
            task=task,
            trigger=trigger,
            payload=payload,
            status=ExecutionStatus.QUEUED,
            enqueued_at=timezone.now(),
        )
        _send_after_commit(execution=execution, attempt=1)
    return execution
