"""The life of one execution: claim it, run its action, record what happened.

Delivery is at-least-once (acks_late, requeue on worker loss); these functions make
the effect exactly-once. Each message names the attempt it wants to start; a claim
succeeds only when that attempt is due, or when the attempt's previous holder is
provably dead (its lease ran out, or its process on this host is gone). Everything
else is a duplicate and is dropped.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from celery import current_app
from celery.exceptions import SoftTimeLimitExceeded
from django.db import (
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
    transaction,
)
from django.utils import timezone

import executors
from executors.base import ActionResult, ExecutionContext
from executors.errors import ExecutorError, RetryableError
from executors.templating import render_value

from .. import rows, sealed
from ..conf import NOTIFY_TASK_NAME, scheduler_settings
from ..models import (
    ActionType,
    ExecutionStatus,
    ExecutionTrigger,
    MisfirePolicy,
    OverlapPolicy,
    ScheduledTask,
    TaskExecution,
    TaskStatus,
    TaskType,
)
from ..specs import RetryPolicy
from ..storable import log_entry, storable, storable_text
from .conditions import conditions_unmet
from .host import execution_context
from .triggers import listeners, system_event_emit, system_event_name

logger = logging.getLogger(__name__)

WAITING = (ExecutionStatus.QUEUED, ExecutionStatus.RETRYING)


@functools.cache
def node() -> str:
    """This machine as process IDs see it: the hostname plus a key from the boot id and
    the PID namespace, so containers sharing a hostname never judge each other's PIDs."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return socket.gethostname()
    key = hashlib.sha256(f"{boot}/{namespace}".encode()).hexdigest()[:8]
    return f"{socket.gethostname()}/{key}"


def worker_identity() -> str:
    """node:pid:thread — the thread part tells apart runs inside one process (thread or
    greenlet pools, whose get_ident() is per greenlet once gevent patches threading)."""
    return f"{node()}:{os.getpid()}:{threading.get_ident()}"


@dataclass(frozen=True)
class Outcome:
    status: str
    retry_in: float | None = None


def execution_for_occurrence(
    *, task_id: str | uuid.UUID | None, scheduled_for: datetime
) -> TaskExecution | None:
    """The execution record of one scheduled occurrence, made once whoever asks first."""
    try:
        task_id = uuid.UUID(str(task_id))
    except ValueError:
        return None  # a beat row or message that names no task of ours
    task = ScheduledTask.objects.filter(pk=task_id).first()
    if task is None or task.status in {TaskStatus.COMPLETED, TaskStatus.FAILED}:
        return TaskExecution.objects.filter(
            task_id=task_id, trigger=ExecutionTrigger.SCHEDULED, scheduled_for=scheduled_for
        ).first()
    defaults: dict[str, Any] = {"status": ExecutionStatus.QUEUED}
    if task.status == TaskStatus.PAUSED and task.type == TaskType.ONE_TIME:
        return None  # its one occurrence is still owed: resuming the task runs it
    if task.status == TaskStatus.PAUSED:
        defaults = {
            "status": ExecutionStatus.SKIPPED,
            "error": "skipped: the task is paused",
            "completed_at": timezone.now(),
        }
    execution, _ = TaskExecution.objects.get_or_create(
        task=task,
        trigger=ExecutionTrigger.SCHEDULED,
        scheduled_for=scheduled_for,
        defaults=defaults,
    )
    return execution


def execution_take_publication(*, execution: TaskExecution) -> bool:
    """True for exactly one caller: the one that is to publish this queued execution's
    first message (two beats recording the same occurrence publish it once)."""
    return bool(
        TaskExecution.objects.filter(
            pk=execution.pk, status=ExecutionStatus.QUEUED, enqueued_at__isnull=True
        ).update(enqueued_at=timezone.now())
    )


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def holder_is_dead(execution: TaskExecution, now: datetime) -> bool:
    if execution.lease_expires_at is not None and execution.lease_expires_at <= now:
        return True
    host, pid_text, thread_text = (execution.worker.split(":") + ["", ""])[:3]
    if host != node() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        # The same thread of this very process is free to run us now, so the earlier
        # run there is over; another thread of ours may still be running it.
        return thread_text in ("", str(threading.get_ident()))
    return _process_gone(pid)


def execution_claim(*, execution_id: str, attempt: int, worker: str) -> TaskExecution | None:
    """Take the execution for ``attempt``; None when this delivery must not run it.

    The usual case, the attempt that is due, is one compare-and-set UPDATE that returns
    the row and its task (no transaction, no lock). Anything else, a
    duplicate or a takeover from a holder that may be dead, is judged under the row's
    lock."""
    now = timezone.now()  # the attempt starts as the worker takes it up
    entry = log_entry(f"attempt {attempt} started on {worker}")
    due = {
        "pk": execution_id,
        "status": rows.In(WAITING),
        "attempt": attempt - 1,
        "current_step": None,
    }
    taken = {
        **_taken(attempt=attempt, worker=worker, now=now, deliveries=1),
        "logs": rows.Append([entry]),
    }
    try:
        execution = rows.update_returning(TaskExecution, due, taken, related="task")
    except (OperationalError, InterfaceError):
        # The kept connection broke since the last run (it is not tested before every
        # run): once more on a new one.
        if connection.in_atomic_block:
            raise
        connection.close()
        execution = rows.update_returning(
            TaskExecution, due, taken, related="task"
        ) or _claimed_before_its_answer_was_lost(execution_id, attempt, worker, now)
    if execution is not None:
        return execution
    return _claim_locked(execution_id=execution_id, attempt=attempt, worker=worker, now=now)


def _claimed_before_its_answer_was_lost(
    execution_id: str, attempt: int, worker: str, now: datetime
) -> TaskExecution | None:
    """The first try of a claim may have taken the attempt and lost only its answer: the
    row then holds this very claim (its worker and its start time, unique to the call).
    Returned as it is (a no-op UPDATE that returns the row with its task), not judged as
    a takeover from a lost holder."""
    mine = {
        "pk": execution_id,
        "status": ExecutionStatus.RUNNING,
        "attempt": attempt,
        "worker": worker,
        "started_at": now,
        "deliveries": 1,
    }
    return rows.update_returning(TaskExecution, mine, {"deliveries": 1}, related="task")


def _taken(*, attempt: int, worker: str, now: datetime, deliveries: int) -> dict[str, Any]:
    """The columns a claim of ``attempt`` sets (besides its log line)."""
    return {
        "status": ExecutionStatus.RUNNING,
        "attempt": attempt,
        "worker": worker,
        "started_at": now,
        "next_attempt_at": None,
        "lease_expires_at": now + timedelta(seconds=scheduler_settings().lease_seconds),
        "deliveries": deliveries,
    }


def _claim_locked(
    *, execution_id: str, attempt: int, worker: str, now: datetime
) -> TaskExecution | None:
    conf = scheduler_settings()
    with transaction.atomic():
        execution = (
            TaskExecution.objects.select_for_update()
            .select_related("task")
            .filter(pk=execution_id)
            .first()
        )
        if execution is None or execution.is_finished:
            return None
        if execution.current_step is not None:
            return None  # a chain in progress: its steps run as their own Celery tasks
        deliveries = 1
        if execution.status in WAITING:
            if attempt != execution.attempt + 1:
                return None
        elif execution.status == ExecutionStatus.RUNNING:
            if attempt != execution.attempt or not holder_is_dead(execution, now):
                return None
            execution.logs.append(
                log_entry(
                    f"attempt {attempt} was interrupted on {execution.worker or 'a worker'}",
                    "warning",
                )
            )
            if execution.deliveries >= conf.max_deliveries:
                _finish(
                    execution,
                    status=ExecutionStatus.FAILED,
                    now=now,
                    error=(
                        f"the worker running this execution was lost {execution.deliveries} times; "
                        "giving up"
                    ),
                )
                return None
            deliveries = execution.deliveries + 1
        taken = _taken(attempt=attempt, worker=worker, now=now, deliveries=deliveries)
        for field, value in taken.items():
            setattr(execution, field, value)
        execution.logs.append(log_entry(f"attempt {attempt} started on {worker}"))
        execution.save(update_fields=[*taken, "logs"])
    return execution


def execution_run(*, execution: TaskExecution) -> Outcome:
    """Run the claimed execution's action (or start its chain) and record the outcome."""
    task = execution.task
    logs: list[dict[str, str]] = []
    ctx = execution_context(
        execution, log=lambda message: logs.append(log_entry(message)), attempt=execution.attempt
    )
    started = time.monotonic()
    try:
        # A scheduled run is judged at its nominal time, so a late start does not change it.
        moment = execution.scheduled_for or timezone.now()
        reason = conditions_unmet(task=task, now=moment, policy=ctx.egress, log=ctx.log)
        if reason is not None:
            logs.append(log_entry(f"skipped: {reason}"))
            return execution_finish(
                execution=execution,
                status=ExecutionStatus.SKIPPED,
                error=f"skipped: {reason}",
                logs=logs,
                started=started,
            )
        if task.action_type == ActionType.CHAIN:
            from .chains import chain_start

            return chain_start(execution=execution, logs=logs, started=started)
        result = run_action(task.action, ctx)
    except Exception as exc:  # noqa: BLE001 - classified below, never swallowed silently
        if not isinstance(exc, ExecutorError):
            logger.exception("execution %s: unexpected error", execution.id)
        return _after_failure(execution, exc, logs, started)
    return execution_finish(
        execution=execution,
        status=ExecutionStatus.COMPLETED,
        result=result.output,
        logs=logs,
        started=started,
        usage=usage_of(result.output),
    )


def run_action(action: dict[str, Any], ctx: ExecutionContext) -> ActionResult:
    """Render the action's templates, validate the result, and run its executor."""
    action = sealed.unsealed(action)  # secret headers, in clear text only from here on
    executor = executors.registry.get(str(action.get("type")))
    missing: list[str] = []
    rendered = render_value(action, ctx.variables, missing=missing)
    if missing:
        ctx.log(f"no value for {', '.join(sorted(set(missing))[:10])}; rendered as empty")
    return executor.execute(executor.validate(rendered), ctx)


def is_retryable(exc: BaseException) -> bool:
    """Retryable errors and unexpected ones retry; permanent and config errors do not."""
    return isinstance(exc, RetryableError) or not isinstance(exc, ExecutorError)


def failure_message(exc: BaseException) -> str:
    if isinstance(exc, SoftTimeLimitExceeded):
        return "the action ran past its time limit and was interrupted"
    return str(exc) or type(exc).__name__


def usage_of(output: Any) -> tuple[int, int]:
    """Claude tokens (in, out) an action reports in its result's ``usage``."""
    usage = output.get("usage") if isinstance(output, dict) else None
    if not isinstance(usage, dict):
        return (0, 0)
    values = (usage.get("inputTokens"), usage.get("outputTokens"))
    return tuple(v if isinstance(v, int) and v >= 0 else 0 for v in values)  # type: ignore[return-value]


class RetryDecision(NamedTuple):
    error: str
    #: Seconds until the next attempt; None when the failure is final.
    retry_in: float | None
    logs: list[dict[str, str]]


def retry_decision(
    task: ScheduledTask, attempt: int, exc: BaseException, *, label: str = ""
) -> RetryDecision:
    """What failed ``attempt`` leads to under the task's retry policy: the error to record,
    the delay before the next attempt (None: no retry) and the log lines that say so.
    ``label`` names a chain step ("step 2 of 3 (webhook)") in those lines."""
    message = failure_message(exc)
    prefix = f"{label} " if label else ""
    logs = [log_entry(f"{prefix}attempt {attempt} failed: {message}", "error")]
    policy = RetryPolicy.model_validate(task.retry_policy or {})
    if not (is_retryable(exc) and attempt <= policy.maxRetries):
        return RetryDecision(message, None, logs)
    delay = policy.delay_seconds(attempt)
    logs.append(
        log_entry(
            f"retrying {prefix}in {delay:g}s (attempt {attempt + 1} of {policy.maxRetries + 1})"
        )
    )
    return RetryDecision(message, delay, logs)


def _after_failure(
    execution: TaskExecution,
    exc: BaseException,
    logs: list[dict[str, str]],
    started: float,
) -> Outcome:
    error, retry_in, lines = retry_decision(execution.task, execution.attempt, exc)
    logs.extend(lines)
    return execution_finish(
        execution=execution,
        status=ExecutionStatus.FAILED if retry_in is None else ExecutionStatus.RETRYING,
        error=error,
        logs=logs,
        started=started,
        retry_in=retry_in,
    )


def execution_killed_by_time_limit(*, execution_id: str, attempt: int, limit: float) -> None:
    """The worker killed this attempt at its hard time limit (it ignored the soft one):
    it fails here and now, instead of looking like a lost worker and running again."""
    with transaction.atomic():
        current = (
            TaskExecution.objects.select_for_update()
            .select_related("task")
            .filter(pk=execution_id, status=ExecutionStatus.RUNNING, attempt=attempt)
            .first()
        )
        if current is None:
            return
        message = f"the action exceeded the hard time limit of {limit:g}s and was killed"
        current.logs.append(log_entry(f"attempt {attempt} failed: {message}", "error"))
        _finish(current, status=ExecutionStatus.FAILED, now=timezone.now(), error=message)


RECORD_RETRY_DELAYS = (0.5, 1, 2, 4, 8, 15, 30)


def execution_finish(**outcome: Any) -> Outcome:
    """Record the outcome of an attempt whose side effect has happened. The database may be
    restarting: keep trying for about a minute rather than leave the execution running
    (which would make the recovery job run the action again)."""
    for delay in RECORD_RETRY_DELAYS:
        try:
            return _write_outcome(**outcome)
        except (OperationalError, InterfaceError) as exc:
            logger.warning(
                "recording execution %s failed (%s); retrying in %ss",
                outcome["execution"].pk,
                exc,
                delay,
            )
            close_old_connections()
            time.sleep(delay)
    return _write_outcome(**outcome)


def _write_outcome(
    *,
    execution: TaskExecution,
    status: str,
    logs: list[dict[str, str]],
    started: float,
    result: Any = None,
    error: str = "",
    retry_in: float | None = None,
    usage: tuple[int, int] = (0, 0),
) -> Outcome:
    now = timezone.now()
    row = _terminal_fields(status=status, now=now, result=result, error=error)
    row["duration_ms"] = int((time.monotonic() - started) * 1000)
    if retry_in is not None:
        row["next_attempt_at"] = now + timedelta(seconds=retry_in)
    # Compare-and-set: only the holder of this attempt records its outcome.
    holder = {
        "pk": execution.pk,
        "status": ExecutionStatus.RUNNING,
        "attempt": execution.attempt,
        "worker": execution.worker,
    }
    changes = {
        **row,
        "input_tokens": rows.Add(usage[0]),
        "output_tokens": rows.Add(usage[1]),
        "logs": rows.Append(logs),
    }
    heard = (ScheduledTask, listeners(execution.task.owner_id, system_event_name(status)))
    if _write_at_once(execution, status, holder, changes, heard):
        _took(execution, row, logs, usage)
        _followups(execution, status)  # (notifications; the statement ruled out the rest)
        return Outcome(status=status, retry_in=retry_in)
    with transaction.atomic():
        # The same statement tells whether any task listens to the run's outcome.
        won, listened = rows.update_and_exists(TaskExecution, holder, changes, exists=heard)
        if not won:
            logger.warning(
                "execution %s was taken over; dropping this attempt's outcome", execution.pk
            )
            return Outcome(status="superseded")
        _took(execution, row, logs, usage)
        _after_finish(execution, status, listened=listened)
    return Outcome(status=status, retry_in=retry_in)


def _write_at_once(
    execution: TaskExecution,
    status: str,
    holder: dict[str, Any],
    changes: dict[str, Any],
    heard: tuple[type[ScheduledTask], rows.Where],
) -> bool:
    """The usual outcome as one statement, so one round trip instead of four (BEGIN, the
    row, the counters, COMMIT): a recurring or trigger task's run completed or failed, the
    task holds no runs back, nobody listens to the outcome and the task was not saved since
    the run read it. The statement writes the row and the task's counters, or nothing:
    then the general path decides (returns False). Nothing written to the database
    follows it (no events, no runs to release), so it is the whole outcome, as atomic as
    the transaction; notifications are sent after it, as after that transaction's commit.
    PostgreSQL only (a data-modifying WITH)."""
    task = execution.task
    if not (
        status in {ExecutionStatus.COMPLETED, ExecutionStatus.FAILED}
        and task.type != TaskType.ONE_TIME
        and not _may_hold(task)
        and connection.vendor == "postgresql"
    ):
        return False
    done, done_params = rows.update_sql(TaskExecution, holder, changes)
    unheard, unheard_params = rows.exists_sql(*heard)
    same, same_params = rows.exists_sql(
        ScheduledTask, {"pk": task.pk, "updated_at": task.updated_at}
    )
    # The counters go by the task's id alone: a save that commits while this statement
    # waits for the task's row still counts the run (their SET adds to the row as it is).
    count, count_params = rows.update_sql(ScheduledTask, {"pk": task.pk}, _counters(execution))
    with rows.cursor() as cursor:
        cursor.execute(
            f"WITH done AS ({done} AND NOT {unheard} AND {same} RETURNING 1), "
            f"counted AS ({count} AND EXISTS (SELECT 1 FROM done)) "
            "SELECT count(*) FROM done",  # (counted runs to completion all the same)
            [*done_params, *unheard_params, *same_params, *count_params],
        )
        (written,) = cursor.fetchone()
    return bool(written)


def _took(
    execution: TaskExecution,
    row: dict[str, Any],
    logs: list[dict[str, str]],
    usage: tuple[int, int],
) -> None:
    """The recorded outcome on the object in hand, as the database now holds it."""
    for field, value in row.items():
        setattr(execution, field, value)
    execution.logs = [*_as_list(execution.logs), *logs]
    execution.input_tokens += usage[0]
    execution.output_tokens += usage[1]


def _as_list(logs: Any) -> list[Any]:
    """The logs as rows.Append sees them: a column that holds no list starts a new one."""
    return logs if isinstance(logs, list) else []


def _terminal_fields(
    *, status: str, now: datetime, result: Any = None, error: str = ""
) -> dict[str, Any]:
    """The columns a terminal or retrying state writes."""
    row: dict[str, Any] = {
        "status": status,
        "result": storable(result),
        "error": storable_text(error),
        "lease_expires_at": None,
    }
    if status != ExecutionStatus.RETRYING:
        row["completed_at"] = now
    return row


def _finish(
    execution: TaskExecution, *, status: str, now: datetime, result: Any = None, error: str = ""
) -> None:
    """Write a terminal or retrying state on a locked execution, then what follows it."""
    for field, value in _terminal_fields(
        status=status, now=now, result=result, error=error
    ).items():
        setattr(execution, field, value)
    execution.save()
    _after_finish(execution, status)


def _after_finish(execution: TaskExecution, status: str, *, listened: bool = True) -> None:
    """What a recorded state sets off: the task.completed / task.failed events, the task's
    counters, notifications, held runs released.

    A recurring or trigger task not saved since the run read it (a save moves updated_at,
    the runtime's own updates do not) has its counters set in one statement, without a
    read. A one-time task (its status follows its one occurrence), or a task edited, paused
    or deleted meanwhile, is read again under its lock, so the run goes by its current
    policies and notification settings. The task's row is locked last and briefly."""
    if status == ExecutionStatus.RETRYING:
        return  # the run is not over
    done = status in {ExecutionStatus.COMPLETED, ExecutionStatus.FAILED}
    if done and listened:  # (False: the outcome's statement found no listener)
        system_event_emit(execution=execution, status=status)
    task = execution.task
    current = False
    if task.type != TaskType.ONE_TIME:
        same = {"pk": task.pk, "updated_at": task.updated_at}
        current = bool(
            rows.update(ScheduledTask, same, _counters(execution))
            if done
            else rows.exists(ScheduledTask, same)
        )
    if not current:
        fresh = ScheduledTask.objects.select_for_update().filter(pk=task.pk).first()
        if fresh is None:
            return  # deleted meanwhile: its executions went with it
        execution.task = task = fresh
        if done:
            _record_on_task(task, execution, status)
    if status == ExecutionStatus.SKIPPED and _is_the_one_time_occurrence(execution):
        # A one-time task whose single occurrence was skipped (a condition did not hold)
        # will never run: it is done, not "active" forever with no next run.
        task.status = TaskStatus.COMPLETED
        task.save(update_fields=["status", "updated_at"])
        ScheduledTask.objects.filter(pk=task.pk).update(next_run=None)
    _followups(execution, status)


def _followups(execution: TaskExecution, status: str) -> None:
    """Notifications of a finished run, and the runs its task held back."""
    if status in {ExecutionStatus.COMPLETED, ExecutionStatus.FAILED}:
        _notify_after_commit(execution, status)
    if _may_hold(execution.task):
        from .occurrences import waiting_release

        waiting_release(task_id=execution.task.pk)  # overlapPolicy queue, catch-up


def _may_hold(task: ScheduledTask) -> bool:
    """Only these policies hold runs back (a held run left by a policy changed since is
    released by the recovery job)."""
    return (
        task.overlap_policy == OverlapPolicy.QUEUE or task.misfire_policy == MisfirePolicy.RUN_ALL
    )


def _is_the_one_time_occurrence(execution: TaskExecution) -> bool:
    task = execution.task
    return (
        task.type == TaskType.ONE_TIME
        and execution.trigger == ExecutionTrigger.SCHEDULED
        and task.status == TaskStatus.ACTIVE
        and task.run_at == execution.scheduled_for
    )


def _notify_after_commit(execution: TaskExecution, status: str) -> None:
    notification = execution.task.notification or {}
    wanted = notification.get("onSuccess" if status == ExecutionStatus.COMPLETED else "onFailure")
    if not (wanted and notification.get("channels")):
        return
    execution_id = str(execution.pk)
    transaction.on_commit(
        lambda: current_app.send_task(
            NOTIFY_TASK_NAME, kwargs={"execution_id": execution_id}, ignore_result=True
        ),
        robust=True,
    )


def _counters(execution: TaskExecution) -> dict[str, Any]:
    """A finished run on its task: counted in SQL, so no run's count is lost. A recurring
    task's ``next_run`` is moved by its fires and edits, a trigger task has none."""
    return {"last_run": execution.started_at, "run_count": rows.Add(1)}


def _record_on_task(task: ScheduledTask, execution: TaskExecution, status: str) -> None:
    """The counters of a task read fresh under its lock; a one-time task's ``next_run``
    and status follow its one occurrence."""
    from .schedules import compute_next_run

    counters = _counters(execution)
    if task.type == TaskType.ONE_TIME:
        counters["next_run"] = compute_next_run(task)
    rows.update(ScheduledTask, {"pk": task.pk}, counters)
    # Its one occurrence ran, so the task is finished even if paused meanwhile; but a
    # task rescheduled while this attempt ran keeps its new time.
    one_time_done = (
        task.type == TaskType.ONE_TIME
        and execution.trigger == ExecutionTrigger.SCHEDULED
        and task.status in {TaskStatus.ACTIVE, TaskStatus.PAUSED}
        and task.run_at == execution.scheduled_for
    )
    if one_time_done:
        task.status = (
            TaskStatus.COMPLETED if status == ExecutionStatus.COMPLETED else TaskStatus.FAILED
        )
        task.save(update_fields=["status", "updated_at"])
