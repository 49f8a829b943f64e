"""Chains: a Celery canvas chain with one Celery task per step.

The execution's ``steps`` record each step (status, attempt, result, error, timing) and
``current_step`` is the cursor. Each step message names (execution, step, attempt) and is
claimed like a whole execution is (a duplicate delivery is dropped, a dead holder's step
is taken over), so each step retries on its own and runs its effect once. The previous
step's stored result is the next step's ``{previous_result}``. A failed step stops the
chain (``Ignore`` ends the Celery chain) and the execution says which step failed.
While the chain waits between steps its lease is short, so a lost step message is found
by the recovery job, which publishes the rest of the chain from the cursor.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from celery import chain, current_app
from django.db import transaction
from django.utils import timezone

from executors.chain import flatten
from executors.errors import ExecutorError

from ..conf import RUN_STEP_NAME, scheduler_settings
from ..models import ExecutionStatus, TaskExecution
from ..storable import log_entry, storable, storable_text
from .executions import (
    Outcome,
    _finish,
    holder_is_dead,
    retry_decision,
    run_action,
    usage_of,
)
from .host import execution_context

logger = logging.getLogger(__name__)

PENDING, RUNNING, RETRYING, COMPLETED, FAILED, NOT_RUN = (
    "pending",
    "running",
    "retrying",
    "completed",
    "failed",
    "not-run",
)


@dataclass(frozen=True)
class StepOutcome:
    status: str  # "next", "completed", "retrying", "failed", "superseded"
    retry_in: float | None = None


def _locked(execution_id: Any) -> TaskExecution | None:
    return (
        TaskExecution.objects.select_for_update()
        .select_related("task")
        .filter(pk=execution_id)
        .first()
    )


def chain_start(*, execution: TaskExecution, logs: list[dict[str, str]], started: float) -> Outcome:
    """Record the steps and publish the chain (the caller holds the execution's claim)."""
    steps = flatten(execution.task.action.get("tasks", []))
    now = timezone.now()
    with transaction.atomic():
        current = _locked(execution.pk)
        if current is None or (
            current.status != ExecutionStatus.RUNNING
            or current.attempt != execution.attempt
            or current.worker != execution.worker
        ):
            return Outcome(status="superseded")
        if current.current_step is None:
            current.steps = [
                {"index": i, "type": step.get("type"), "status": PENDING, "attempt": 0}
                for i, step in enumerate(steps)
            ]
            current.current_step = 0
        current.logs.extend(logs)
        current.logs.append(log_entry(f"chain of {len(steps)} steps started"))
        current.worker = ""
        current.deliveries = 0
        current.lease_expires_at = now + timedelta(seconds=scheduler_settings().requeue_after)
        current.save(
            update_fields=[
                "steps",
                "current_step",
                "logs",
                "worker",
                "deliveries",
                "lease_expires_at",
            ]
        )
        chain_publish(execution=current)
    return Outcome(status="chained")


def chain_publish(*, execution: TaskExecution) -> None:
    """Publish the rest of the chain from its cursor, once the transaction commits."""
    index = execution.current_step
    if index is None or index >= len(execution.steps):
        return
    step = execution.steps[index]
    first_attempt = step["attempt"] if step["status"] == RUNNING else step["attempt"] + 1
    signatures = [
        current_app.signature(
            RUN_STEP_NAME,
            kwargs={
                "execution_id": str(execution.pk),
                "step": i,
                "attempt": first_attempt if i == index else 1,
            },
            immutable=True,
        )
        for i in range(index, len(execution.steps))
    ]
    TaskExecution.objects.filter(pk=execution.pk).update(enqueued_at=timezone.now())
    transaction.on_commit(lambda: chain(*signatures).apply_async(), robust=True)


def step_claim(*, execution_id: str, step: int, attempt: int, worker: str) -> TaskExecution | None:
    """Take ``step`` of the chain for ``attempt``; None when this delivery must not run."""
    conf = scheduler_settings()
    now = timezone.now()
    with transaction.atomic():
        execution = _locked(execution_id)
        if execution is None or execution.is_finished or execution.current_step != step:
            return None
        record = execution.steps[step]
        label = _label(execution, step)
        if record["status"] in {PENDING, RETRYING}:
            if attempt != record["attempt"] + 1:
                return None
            execution.deliveries = 1
        elif record["status"] == RUNNING:
            if attempt != record["attempt"] or not holder_is_dead(execution, now):
                return None
            execution.logs.append(
                log_entry(
                    f"{label} attempt {attempt} was interrupted on {execution.worker}", "warning"
                )
            )
            if execution.deliveries >= conf.max_deliveries:
                message = f"the worker running {label} was lost {execution.deliveries} times"
                _fail(execution, step, message, now)
                return None
            execution.deliveries += 1
        else:
            return None
        record.update(status=RUNNING, attempt=attempt, startedAt=now.isoformat(), worker=worker)
        execution.status = ExecutionStatus.RUNNING
        execution.worker = worker
        execution.next_attempt_at = None
        execution.lease_expires_at = now + timedelta(seconds=conf.lease_seconds)
        execution.logs.append(log_entry(f"{label} attempt {attempt} started on {worker}"))
        execution.save()
    return execution


def step_run(*, execution: TaskExecution, step: int) -> StepOutcome:
    """Run the claimed step and record what happened."""
    record = execution.steps[step]
    action = flatten(execution.task.action["tasks"])[step]
    previous = execution.steps[step - 1].get("result") if step else None
    logs: list[dict[str, str]] = []
    ctx = execution_context(
        execution,
        log=lambda message: logs.append(log_entry(f"step {step + 1}: {message}")),
        attempt=record["attempt"],
        previous_result=previous,
        step=step,
    )
    started = time.monotonic()
    try:
        result = run_action(action, ctx)
    except Exception as exc:  # noqa: BLE001 - classified by retry_decision
        if not isinstance(exc, ExecutorError):
            logger.exception("execution %s step %s: unexpected error", execution.pk, step)
        return _record_failure(execution, step, exc, logs, started)
    return _record(execution, step, logs, started, output=result.output)


def _record_failure(
    execution: TaskExecution,
    step: int,
    exc: BaseException,
    logs: list[dict[str, str]],
    started: float,
) -> StepOutcome:
    attempt = execution.steps[step]["attempt"]
    error, retry_in, lines = retry_decision(
        execution.task, attempt, exc, label=_label(execution, step)
    )
    logs.extend(lines)
    if retry_in is not None:
        return _record(execution, step, logs, started, error=error, retry_in=retry_in)
    return _record(execution, step, logs, started, error=error, failed=True)


def _record(
    execution: TaskExecution,
    step: int,
    logs: list[dict[str, str]],
    started: float,
    *,
    output: Any = None,
    error: str = "",
    retry_in: float | None = None,
    failed: bool = False,
) -> StepOutcome:
    now = timezone.now()
    attempt = execution.steps[step]["attempt"]
    with transaction.atomic():
        current = _locked(execution.pk)
        if (
            current is None
            or current.status != ExecutionStatus.RUNNING
            or current.current_step != step
            or current.worker != execution.worker
            or current.steps[step].get("attempt") != attempt
        ):
            logger.warning("execution %s step %s was taken over", execution.pk, step)
            return StepOutcome(status="superseded")
        record = current.steps[step]
        record["durationMs"] = int((time.monotonic() - started) * 1000)
        record.pop("worker", None)
        current.logs.extend(logs)
        if retry_in is not None:
            record.update(status=RETRYING, error=storable_text(error))
            current.status = ExecutionStatus.RETRYING
            current.next_attempt_at = now + timedelta(seconds=retry_in)
            current.lease_expires_at = None
            current.worker = ""
            current.save()
            return StepOutcome(status="retrying", retry_in=retry_in)
        if failed:
            _fail(current, step, error, now)
            return StepOutcome(status="failed")
        record.update(status=COMPLETED, result=storable(output), completedAt=now.isoformat())
        record.pop("error", None)
        tokens_in, tokens_out = usage_of(output)
        current.input_tokens += tokens_in
        current.output_tokens += tokens_out
        if step + 1 < len(current.steps):
            current.current_step = step + 1
            current.worker = ""
            current.deliveries = 0
            current.lease_expires_at = now + timedelta(seconds=scheduler_settings().requeue_after)
            current.save()
            return StepOutcome(status="next")
        _set_duration(current, now)
        current.logs.append(log_entry(f"chain of {len(current.steps)} steps completed"))
        _finish(current, status=ExecutionStatus.COMPLETED, now=now, result=record["result"])
    return StepOutcome(status="completed")


def _fail(execution: TaskExecution, step: int, error: str, now: Any) -> None:
    record = execution.steps[step]
    record.update(status=FAILED, error=storable_text(error), completedAt=now.isoformat())
    record.pop("worker", None)
    for later in execution.steps[step + 1 :]:
        later["status"] = NOT_RUN
    _set_duration(execution, now)
    message = f"{_label(execution, step)} failed: {error}"
    _finish(execution, status=ExecutionStatus.FAILED, now=now, error=message)


def _set_duration(execution: TaskExecution, now: Any) -> None:
    if execution.started_at is not None:
        execution.duration_ms = int((now - execution.started_at).total_seconds() * 1000)


def _label(execution: TaskExecution, step: int) -> str:
    return f"step {step + 1} of {len(execution.steps)} ({execution.steps[step].get('type')})"


def step_killed_by_time_limit(*, execution_id: str, step: int, attempt: int, limit: float) -> None:
    """The worker killed this step at its hard time limit: the step and the chain fail."""
    with transaction.atomic():
        current = _locked(execution_id)
        if (
            current is None
            or current.status != ExecutionStatus.RUNNING
            or current.current_step != step
            or current.steps[step].get("attempt") != attempt
        ):
            return
        message = f"the action exceeded the hard time limit of {limit:g}s and was killed"
        _fail(current, step, message, timezone.now())
