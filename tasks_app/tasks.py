"""Celery tasks: thin wrappers over the services (load -> claim -> executor -> record)."""

from __future__ import annotations

import gc
import time
from datetime import datetime
from typing import Any

from celery import Task, shared_task, signals
from celery.exceptions import Ignore, TimeLimitExceeded
from django.db import close_old_connections, connections

from .conf import (
    CLEANUP_TASK_NAME,
    LATE_CHECK_TASK_NAME,
    NOTIFY_TASK_NAME,
    RECOVER_TASK_NAME,
    RUN_STEP_NAME,
    RUN_TASK_NAME,
    runs_ignore_result,
)
from .models import ExecutionStatus
from .services import chains, executions, occurrences, recovery

#: A kept connection that was fine at the end of a run less than this many seconds ago
#: is not tested again before the next run's first query.
FRESH_CONNECTION_SECONDS = 1.0


@signals.worker_before_create_process.connect
def _freeze_before_fork(**_: Any) -> None:
    """In a prefork worker, before each pool process is forked: what the worker has loaded
    (Django, the executors, ~140,000 objects) is moved out of the cyclic garbage
    collector's sight (``gc.freeze``), as CPython advises for a parent that forks. A pool
    process then never walks it in a full collection (90 ms on a 2-core machine, a run
    started that late) and leaves the pages it shares with the parent untouched (the
    collector writes into every object it walks). Collected first, what was frozen
    before included, so no garbage is frozen for good (a pool process replaced later
    forks from a parent that has reconnected, for one)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


@signals.task_prerun.connect
def _database_connections_before(
    sender: Task | None = None, kwargs: dict[str, Any] | None = None, **_: Any
) -> None:
    """Before every task, what Django does before every request: close connections that
    failed or outlived CONN_MAX_AGE; CONN_HEALTH_CHECKS tests the one kept before its first
    query. A run of an execution skips that round trip when its connection was fine at the
    end of a run a moment ago (a busy worker runs hundreds a second on it): its first
    query is the claim, which takes a new connection and tries again when the kept one
    broke meanwhile. Every other task is tested as Django would. Celery's own Django
    fix-up would close every connection around every task (a new PostgreSQL session per
    run); CELERY_DB_REUSE_MAX in settings holds it back."""
    if sender is None or getattr(sender.request, "is_eager", False):
        return
    close_old_connections()
    if sender.name != RUN_TASK_NAME or not (kwargs or {}).get("execution_id"):
        return
    now = time.monotonic()
    for connection in connections.all(initialized_only=True):
        fine_at = getattr(connection, "scheduler_fine_at", None)
        if (
            connection.connection is not None
            and fine_at is not None
            and now - fine_at < FRESH_CONNECTION_SECONDS
        ):
            connection.health_check_done = True  # type: ignore[attr-defined]


@signals.task_postrun.connect
def _database_connections_after(
    sender: Task | None = None, state: str | None = None, **_: Any
) -> None:
    """After every task: close connections that failed (tested) or outlived CONN_MAX_AGE.
    After a run that succeeded, note the kept connections seen fine: no error, and idle
    (not left in a query or a transaction by an interrupted action)."""
    if sender is None or getattr(sender.request, "is_eager", False):
        return
    close_old_connections()
    if sender.name != RUN_TASK_NAME or state != "SUCCESS":
        return
    now = time.monotonic()
    for connection in connections.all(initialized_only=True):
        if (
            connection.connection is not None
            and not connection.errors_occurred
            and _idle(connection.connection)
        ):
            setattr(connection, "scheduler_fine_at", now)  # noqa: B010 (Django's object)


def _idle(raw: Any) -> bool:
    """No query in progress and no transaction open (psycopg's view; SQLite's connections
    are in process and always answer)."""
    info = getattr(raw, "info", None)
    if info is None:
        return True
    from psycopg.pq import TransactionStatus

    return bool(info.transaction_status == TransactionStatus.IDLE)


class RunTask(Task):
    """Celery calls on_failure in the worker's main process when it kills a task at its
    hard time limit; record that, so the attempt is not mistaken for a lost worker."""

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if not (isinstance(exc, TimeLimitExceeded) and kwargs.get("execution_id")):
            return
        limit = float(exc.args[0]) if exc.args else float(self.app.conf.task_time_limit)
        if "step" in kwargs:
            chains.step_killed_by_time_limit(
                execution_id=kwargs["execution_id"],
                step=kwargs["step"],
                attempt=kwargs.get("attempt", 1),
                limit=limit,
            )
            return
        executions.execution_killed_by_time_limit(
            execution_id=kwargs["execution_id"], attempt=kwargs.get("attempt", 1), limit=limit
        )


#: Runs of executions and of chain steps: acknowledged when done and requeued if the
#: worker is lost (the claim makes a second delivery harmless); Celery retries unbounded
#: (the RetryPolicy decides when to stop). The execution history is their record; a
#: Celery result row only when SCHEDULER_CELERY_RESULTS asks for it.
RUN_OPTIONS: dict[str, Any] = {
    "bind": True,
    "base": RunTask,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "max_retries": None,
    "ignore_result": runs_ignore_result(),
}


@shared_task(name=RUN_TASK_NAME, **RUN_OPTIONS)
def run_task(
    self: Task,
    task_id: str | None = None,
    scheduled_for: str | None = None,
    execution_id: str | None = None,
    attempt: int = 1,
) -> dict[str, Any]:
    """Run one attempt of one execution; exactly once per (execution, attempt)."""
    if execution_id is None:
        # Beat could not reach the database: record the occurrence here, as beat would
        # have; run it here when it is due now, send the other runs as messages.
        if task_id is None or scheduled_for is None:
            return {"outcome": "ignored", "reason": "message names no execution"}
        occurrence = datetime.fromisoformat(scheduled_for)
        runs = occurrences.occurrence_fire(task_id=task_id, occurrence=occurrence)
        for run in runs:
            if run.occurrence != occurrence or run.countdown:
                self.app.send_task(
                    RUN_TASK_NAME,
                    kwargs=run.kwargs,
                    countdown=run.countdown,
                    ignore_result=runs_ignore_result(),
                )
        mine = [run for run in runs if run.occurrence == occurrence and not run.countdown]
        if not mine:
            recorded = occurrences.occurrence_execution(task_id=task_id, occurrence=occurrence)
            if recorded is None:
                return {"outcome": "ignored", "reason": "task no longer exists or has finished"}
            if recorded.status == ExecutionStatus.SKIPPED:
                return {
                    "outcome": "skipped",
                    "executionId": str(recorded.pk),
                    "reason": recorded.error,
                }
            if not runs or recorded.attempt:
                return {"outcome": "duplicate", "executionId": str(recorded.pk)}
            return {"outcome": "recorded", "executionId": str(recorded.pk)}
        execution_id = mine[0].execution_id
    claimed = executions.execution_claim(
        execution_id=execution_id, attempt=attempt, worker=executions.worker_identity()
    )
    if claimed is None:
        return {"outcome": "duplicate", "executionId": execution_id}
    outcome = executions.execution_run(execution=claimed)
    if outcome.retry_in is not None:
        raise self.retry(
            countdown=outcome.retry_in,
            kwargs={"execution_id": execution_id, "attempt": attempt + 1},
        )
    return {"outcome": outcome.status, "executionId": execution_id}


@shared_task(name=RUN_STEP_NAME, **RUN_OPTIONS)
def run_step(self: Task, execution_id: str, step: int, attempt: int = 1) -> dict[str, Any]:
    """Run one attempt of one step of a chain; the canvas chain sends the next step."""
    claimed = chains.step_claim(
        execution_id=execution_id, step=step, attempt=attempt, worker=executions.worker_identity()
    )
    if claimed is None:
        raise Ignore()  # a duplicate delivery: this copy of the chain stops here
    outcome = chains.step_run(execution=claimed, step=step)
    if outcome.retry_in is not None:
        raise self.retry(
            countdown=outcome.retry_in,
            kwargs={"execution_id": execution_id, "step": step, "attempt": attempt + 1},
        )
    if outcome.status not in {"next", "completed"}:
        raise Ignore()  # the step failed (or was taken over): the rest of the chain must not run
    return {"outcome": outcome.status, "executionId": execution_id, "step": step}


@shared_task(name=NOTIFY_TASK_NAME, acks_late=True, ignore_result=True)
def notify_execution(execution_id: str) -> list[str]:
    """Send an execution's notifications (at most once: the service claims them)."""
    from .services.notifications import execution_notify

    return execution_notify(execution_id=execution_id)


@shared_task(name=RECOVER_TASK_NAME, acks_late=False, ignore_result=True)
def recover_executions() -> int:
    """Re-publish executions whose message or worker was lost."""
    return recovery.executions_recover()


@shared_task(name=LATE_CHECK_TASK_NAME, acks_late=False, ignore_result=True)
def check_late_tasks() -> int:
    """Dead-man's switch: flag recurring tasks whose occurrence has not started in time
    and notify their owners once (services.lateness)."""
    from .services import lateness

    return lateness.tasks_check_late()


@shared_task(name=CLEANUP_TASK_NAME, acks_late=False, ignore_result=True)
def cleanup_executions() -> dict[str, int]:
    """The daily history cleanup (SCHEDULER_CLEANUP_*), in batches of short transactions."""
    from django.conf import settings

    from .services.maintenance import executions_cleanup

    if settings.SCHEDULER_CLEANUP_KEEP < 0:
        return {"executions": 0, "deliveries": 0}
    result = executions_cleanup(
        keep=settings.SCHEDULER_CLEANUP_KEEP,
        older_than_days=settings.SCHEDULER_CLEANUP_OLDER_THAN_DAYS,
    )
    return {"executions": result.executions, "deliveries": result.deliveries}
