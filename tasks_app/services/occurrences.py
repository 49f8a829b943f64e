"""What happens when a scheduled occurrence fires: one ledger row for it, and one for
every occurrence missed since the previous fire, each decided by the task's schedule
controls (README "When does my task run?").

* Misfire policy: an occurrence fired more than ``SCHEDULER_MISFIRE_GRACE_SECONDS`` after
  its time was missed (the scheduler was down). ``skip`` runs none of the missed ones,
  ``runOnce`` runs the latest of them, ``runAll`` runs every one still inside
  ``catchupWindowSeconds`` (at most ``SCHEDULER_CATCHUP_MAX_RUNS``), one after another.
* Overlap policy: while a run of the task is still going (queued, running or retrying),
  a new occurrence is ``skip``-ped, ``queue``-d (held; at most one waiting, released when
  the run finishes) or ``allow``-ed to run alongside.
* Jitter: each run starts a stable pseudo-random 0..``jitterSeconds`` after its time.
* Window: no occurrence before ``startAt`` or after ``endAt``; past its last occurrence a
  recurring task is ``completed``.

Every occurrence that does not run is written as a ``skipped`` execution saying why, so
the history shows what did not happen. The task row is locked while deciding, so two
beats (or a beat and a worker's fallback) decide each occurrence once.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .. import cron as cronlib
from ..models import (
    ExecutionStatus,
    ExecutionTrigger,
    MisfirePolicy,
    OverlapPolicy,
    ScheduledTask,
    TaskExecution,
    TaskStatus,
    TaskType,
)
from .dispatch import execution_publish
from .executions import log_entry

RUN, HOLD, SKIP = "run", "hold", "skip"
UNFINISHED = (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING, ExecutionStatus.RETRYING)
_MICRO = timedelta(microseconds=1)


@dataclass(frozen=True)
class Publication:
    """A run to send: the execution, its first attempt, and its jitter delay."""

    execution_id: str
    occurrence: datetime
    countdown: float

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"execution_id": self.execution_id, "attempt": 1}


@dataclass
class Decision:
    occurrence: datetime
    outcome: str
    reason: str = ""
    note: str = ""


def _stamp(moment: datetime, task: ScheduledTask) -> str:
    local = moment.astimezone(ZoneInfo(task.timezone))
    return f"{local:%Y-%m-%d %H:%M} {task.timezone}"


def jitter_for(task: ScheduledTask, occurrence: datetime) -> int:
    """The occurrence's delay in whole seconds: stable (every beat and retry agrees)."""
    if not task.jitter_seconds:
        return 0
    digest = hashlib.sha256(f"{task.pk}/{occurrence.isoformat()}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % (task.jitter_seconds + 1)


def in_window(task: ScheduledTask, moment: datetime) -> bool:
    return (task.start_at is None or moment >= task.start_at) and (
        task.end_at is None or moment <= task.end_at
    )


def occurrence_fire(
    *,
    task_id: str | uuid.UUID | None,
    occurrence: datetime,
    since: datetime | None = None,
    now: datetime | None = None,
) -> list[Publication]:
    """Record the fire of ``occurrence`` and the occurrences missed after ``since`` (the
    previous fire); return the runs to send now. Nothing is sent here: the caller sends
    the returned publications once this has committed (beat through its producer)."""
    try:
        pk = uuid.UUID(str(task_id))
    except ValueError:
        return []  # a beat row or message that names no task of ours
    now = now or timezone.now()
    with transaction.atomic():
        task = ScheduledTask.objects.select_for_update().filter(pk=pk).first()
        if task is None or task.status in {TaskStatus.COMPLETED, TaskStatus.FAILED}:
            return []
        dropped = False
        if task.type == TaskType.ONE_TIME:
            if task.status == TaskStatus.PAUSED or task.run_at is None:
                return []  # its one occurrence is still owed: resuming the task runs it
            candidates = [task.run_at]
        elif task.type == TaskType.RECURRING:
            if not in_window(task, occurrence) or _behind_the_ledger(task, occurrence):
                return []
            candidates, dropped = _missed(task, since, occurrence)
            candidates.append(occurrence)
        else:
            return []
        known = set(
            TaskExecution.objects.filter(
                task=task, trigger=ExecutionTrigger.SCHEDULED, scheduled_for__in=candidates
            ).values_list("scheduled_for", flat=True)
        )
        fresh = [moment for moment in candidates if moment not in known]
        if not fresh:
            return []
        decisions = _decide(task, fresh, now)
        if dropped:
            decisions[0].note = (
                "earlier missed occurrences were not recorded one by one "
                f"(more than SCHEDULER_MAX_MISSED={settings.SCHEDULER_MAX_MISSED})"
            )
        publications = _record(task, decisions, now)
        _after_fire(task, now)
    return publications


def _behind_the_ledger(task: ScheduledTask, occurrence: datetime) -> bool:
    """The ledger only moves forward: an occurrence older than the newest recorded one
    (a clock stepped back, a stale beat) is never started after it."""
    newest = (
        TaskExecution.objects.filter(task=task, trigger=ExecutionTrigger.SCHEDULED)
        .order_by("-scheduled_for")
        .values_list("scheduled_for", flat=True)
        .first()
    )
    return newest is not None and occurrence < newest


def occurrence_execution(*, task_id: str | uuid.UUID, occurrence: datetime) -> TaskExecution | None:
    """The ledger row of one occurrence, if it was recorded."""
    try:
        pk = uuid.UUID(str(task_id))
    except ValueError:
        return None
    return TaskExecution.objects.filter(
        task_id=pk, trigger=ExecutionTrigger.SCHEDULED, scheduled_for=occurrence
    ).first()


def _missed(
    task: ScheduledTask, since: datetime | None, occurrence: datetime
) -> tuple[list[datetime], bool]:
    """Occurrences strictly between ``since`` and ``occurrence`` inside the task's window:
    the latest ``SCHEDULER_MAX_MISSED`` of them, and whether older ones were left out."""
    if since is None:
        return [], False
    floor = max(since, task.created_at - _MICRO)
    if task.start_at is not None:
        floor = max(floor, task.start_at - _MICRO)
    limit = settings.SCHEDULER_MAX_MISSED
    fires: list[datetime] = []
    cron = cronlib.Cron(task.cron, task.timezone)
    for moment in cron._backward(occurrence - _MICRO):  # noqa: SLF001 - newest first
        if moment <= floor:
            break
        if len(fires) == limit:
            fires.reverse()
            return fires, True
        fires.append(moment)
    fires.reverse()
    return fires, False


def _decide(task: ScheduledTask, fresh: list[datetime], now: datetime) -> list[Decision]:
    """Misfire policy first (which of the fresh occurrences should run at all), then the
    overlap policy over those in time order."""
    grace = timedelta(seconds=settings.SCHEDULER_MISFIRE_GRACE_SECONDS)
    policy = task.misfire_policy
    latest = fresh[-1]
    window = timedelta(seconds=task.catchup_window_seconds)
    decisions: list[Decision] = []
    for moment in fresh:
        late = now - moment > grace
        if task.status == TaskStatus.PAUSED:
            decisions.append(Decision(moment, SKIP, "the task is paused"))
        elif not late:
            decisions.append(Decision(moment, RUN))
        elif policy == MisfirePolicy.SKIP:
            decisions.append(Decision(moment, SKIP, _missed_reason(now - moment, "skip")))
        elif policy == MisfirePolicy.RUN_ONCE and moment != latest:
            decisions.append(Decision(moment, SKIP, _missed_reason(now - moment, "runOnce")))
        elif policy == MisfirePolicy.RUN_ALL and now - moment > window:
            decisions.append(
                Decision(
                    moment,
                    SKIP,
                    f"missed (downtime): outside the catch-up window of "
                    f"{task.catchup_window_seconds}s (misfirePolicy runAll)",
                )
            )
        else:
            note = "" if not late else f"ran {_seconds(now - moment)} late (downtime)"
            decisions.append(Decision(moment, RUN, note=note))
    runs = [d for d in decisions if d.outcome == RUN]
    cap = settings.SCHEDULER_CATCHUP_MAX_RUNS
    if len(runs) > cap:
        for decision in runs[:-cap]:
            decision.outcome = SKIP
            decision.reason = (
                f"missed (downtime): more than SCHEDULER_CATCHUP_MAX_RUNS={cap} missed runs; "
                "only the latest ran"
            )
        runs = runs[-cap:]
    if task.type == TaskType.RECURRING:
        _apply_overlap(task, runs, backlog=policy == MisfirePolicy.RUN_ALL and len(runs) > 1)
    return decisions


def _missed_reason(lateness: timedelta, policy: str) -> str:
    why = (
        "misfirePolicy skip runs no missed occurrence"
        if policy == "skip"
        else "misfirePolicy runOnce runs only the latest missed occurrence"
    )
    return f"missed (downtime): the scheduler reached it {_seconds(lateness)} late; {why}"


def _seconds(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _apply_overlap(task: ScheduledTask, runs: list[Decision], *, backlog: bool) -> None:
    """While a run is going, later occurrences wait (queue, catch-up backlog) or are
    skipped; ``allow`` lets them all run."""
    if not runs or task.overlap_policy == OverlapPolicy.ALLOW:
        return
    unfinished = TaskExecution.objects.filter(task=task, status__in=UNFINISHED)
    busy: TaskExecution | Decision | None = (
        unfinished.filter(held=False).order_by("queued_at").first()
    )
    waiting = unfinished.filter(held=True).exists()
    for decision in runs:
        if busy is None and not waiting:
            busy = decision  # this one runs; the next ones overlap it
        elif backlog or (task.overlap_policy == OverlapPolicy.QUEUE and not waiting):
            decision.outcome, waiting = HOLD, True
        else:
            decision.outcome = SKIP
            decision.reason = _overlap_reason(task, busy, waiting)


def _overlap_reason(task: ScheduledTask, busy: Any, waiting: bool) -> str:
    if waiting and task.overlap_policy == OverlapPolicy.QUEUE:
        return "overlap: a run is already waiting for the previous one (overlapPolicy queue)"
    if isinstance(busy, TaskExecution):
        what = f"the {busy.trigger} run queued at {_stamp(busy.queued_at, task)}"
        if busy.scheduled_for:
            what = f"the run of {_stamp(busy.scheduled_for, task)}"
        return f"overlap: {what} is still {busy.status} (overlapPolicy skip)"
    return "overlap: the previous run is still going (overlapPolicy skip)"


def _record(task: ScheduledTask, decisions: list[Decision], now: datetime) -> list[Publication]:
    rows: list[TaskExecution] = []
    publications: list[Publication] = []
    for decision in decisions:
        logs = [log_entry(decision.note, "warning")] if decision.note else []
        row = TaskExecution(
            task=task,
            trigger=ExecutionTrigger.SCHEDULED,
            scheduled_for=decision.occurrence,
            status=ExecutionStatus.QUEUED,
            logs=logs,
        )
        if decision.outcome == SKIP:
            row.status = ExecutionStatus.SKIPPED
            row.error = f"skipped: {decision.reason}"
            row.completed_at = now
            logs.append(log_entry(row.error))
        elif decision.outcome == HOLD:
            row.held = True
            logs.append(log_entry("waiting for the task's previous run to finish"))
        else:
            delay = jitter_for(task, decision.occurrence)
            start = decision.occurrence + timedelta(seconds=delay)
            row.enqueued_at = now
            if delay:
                row.next_attempt_at = start
                logs.append(log_entry(f"jitter: starts {delay}s after its time"))
            countdown = max((start - now).total_seconds(), 0.0) if delay else 0.0
            publications.append(Publication(str(row.pk), decision.occurrence, countdown))
        rows.append(row)
    TaskExecution.objects.bulk_create(rows, batch_size=500)
    if task.type == TaskType.ONE_TIME and rows[-1].status == ExecutionStatus.SKIPPED:
        # Its one occurrence will never run: the task is done.
        ScheduledTask.objects.filter(pk=task.pk).update(
            status=TaskStatus.COMPLETED, next_run=None, updated_at=now
        )
        task.status = TaskStatus.COMPLETED
    return publications


def _after_fire(task: ScheduledTask, now: datetime) -> None:
    """Advance ``next_run`` past this fire; past the last occurrence of its window a
    recurring task is completed (its beat row goes with the schedule sync)."""
    from .schedules import compute_next_run

    if task.type != TaskType.RECURRING or task.status != TaskStatus.ACTIVE:
        return
    next_run = compute_next_run(task, now=now)
    ScheduledTask.objects.filter(pk=task.pk).update(next_run=next_run)
    task.next_run = next_run
    if next_run is None and task.end_at is not None:
        task.status = TaskStatus.COMPLETED
        task.save(update_fields=["status", "updated_at"])


def occurrences_skip_paused(*, task: ScheduledTask, until: datetime) -> int:
    """Record the occurrences a paused recurring task did not run (``paused_at`` up to
    ``until``) as skipped, so its history shows the gap; at most SCHEDULER_MAX_MISSED."""
    if task.type != TaskType.RECURRING or task.paused_at is None or not task.cron:
        return 0
    fires, dropped = _missed(task, task.paused_at, until + _MICRO)
    fires = [moment for moment in fires if in_window(task, moment)]
    known = set(
        TaskExecution.objects.filter(
            task=task, trigger=ExecutionTrigger.SCHEDULED, scheduled_for__in=fires
        ).values_list("scheduled_for", flat=True)
    )
    reason = "skipped: the task was paused"
    if task.pause_reason:
        reason = f"{reason} ({task.pause_reason})"
    now = timezone.now()
    rows = [
        TaskExecution(
            task=task,
            trigger=ExecutionTrigger.SCHEDULED,
            scheduled_for=moment,
            status=ExecutionStatus.SKIPPED,
            error=reason,
            completed_at=now,
            logs=[log_entry(reason)],
        )
        for moment in fires
        if moment not in known
    ]
    if rows and dropped:
        rows[0].logs.insert(0, log_entry("earlier paused occurrences were not recorded"))
    TaskExecution.objects.bulk_create(rows, batch_size=500, ignore_conflicts=True)
    return len(rows)


def waiting_release(*, task_id: Any) -> TaskExecution | None:
    """The task's run finished: send the oldest held occurrence, unless another run of
    the task is still going. Call inside the transaction that finished the run."""
    # The task's lock orders this against a fire deciding to hold a new occurrence.
    ScheduledTask.objects.select_for_update().filter(pk=task_id).values_list("pk").first()
    unfinished = TaskExecution.objects.filter(task_id=task_id, status__in=UNFINISHED)
    if unfinished.filter(held=False).exists():
        return None
    waiting = (
        unfinished.filter(held=True)
        .select_for_update(skip_locked=True)
        .order_by("scheduled_for", "queued_at")
        .first()
    )
    if waiting is None:
        return None
    waiting.held = False
    waiting.logs.append(log_entry("the previous run finished; starting"))
    waiting.save(update_fields=["held", "logs"])
    execution_publish(execution=waiting, attempt=1)
    return waiting
