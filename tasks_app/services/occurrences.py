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

import functools
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import transaction
from django.db.models import Max
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
from ..storable import log_entry
from .dispatch import execution_publish

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


@dataclass(frozen=True)
class Fire:
    """One occurrence of one task that beat reached, and the task's previous fire."""

    task_id: str | uuid.UUID | None
    occurrence: datetime
    since: datetime | None = None


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
    return occurrences_fire([Fire(task_id, occurrence, since)], now=now)[0]


def occurrences_fire(
    fires: Sequence[Fire], *, now: datetime | None = None
) -> list[list[Publication]]:
    """``occurrence_fire`` for many tasks in one transaction and a fixed number of
    queries (beat's burst of tasks due on the same minute): the publications of each
    fire, in order. The tasks are locked in primary-key order, so two beats firing
    overlapping batches wait for each other instead of deadlocking."""
    now = now or timezone.now()
    results: list[list[Publication]] = [[] for _ in fires]
    wanted: dict[uuid.UUID, int] = {}
    later: list[int] = []
    for index, fire in enumerate(fires):
        try:
            pk = uuid.UUID(str(fire.task_id))
        except ValueError:
            continue  # a beat row or message that names no task of ours
        if pk in wanted:
            later.append(index)  # the same task twice: decided after the first
        else:
            wanted[pk] = index
    with transaction.atomic():
        tasks = list(
            ScheduledTask.objects.select_for_update()
            .filter(pk__in=list(wanted))
            .exclude(status__in=[TaskStatus.COMPLETED, TaskStatus.FAILED])
            .order_by("pk")
        )
        newest = dict(
            TaskExecution.objects.filter(
                task__in=[task.pk for task in tasks], trigger=ExecutionTrigger.SCHEDULED
            )
            .values("task")
            .annotate(newest=Max("scheduled_for"))
            .values_list("task", "newest")
        )
        plans: list[tuple[int, ScheduledTask, list[datetime], bool]] = []
        for task in tasks:
            fire = fires[wanted[task.pk]]
            planned = _candidates(task, fire, newest.get(task.pk))
            if planned is not None:
                plans.append((wanted[task.pk], task, *planned))
        known = _known(
            [(task, candidates) for _, task, candidates, _ in plans if newest.get(task.pk)],
            newest,
        )
        decided: list[tuple[int, ScheduledTask, list[Decision]]] = []
        for index, task, candidates, dropped in plans:
            fresh = [moment for moment in candidates if (task.pk, moment) not in known]
            if not fresh:
                continue
            decisions = _decide(task, fresh, now)
            if dropped:
                decisions[0].note = (
                    "earlier missed occurrences were not recorded one by one "
                    f"(more than SCHEDULER_MAX_MISSED={settings.SCHEDULER_MAX_MISSED})"
                )
            decided.append((index, task, decisions))
        _apply_overlaps([(task, decisions) for _, task, decisions in decided])
        rows: list[TaskExecution] = []
        for index, task, decisions in decided:
            results[index] = _record(task, decisions, now, rows)
        TaskExecution.objects.bulk_create(rows, batch_size=500)
        _after_fires([task for _, task, _ in decided], now)
    if later:
        for index, publications in zip(
            later, occurrences_fire([fires[i] for i in later], now=now), strict=True
        ):
            results[index] = publications
    return results


def _candidates(
    task: ScheduledTask, fire: Fire, newest: datetime | None
) -> tuple[list[datetime], bool] | None:
    """The occurrences this fire may record (with whether older missed ones were left
    out), or None when it records nothing."""
    if task.type == TaskType.ONE_TIME:
        if task.status == TaskStatus.PAUSED or task.run_at is None:
            return None  # its one occurrence is still owed: resuming the task runs it
        if fire.occurrence != task.run_at:
            return None  # rescheduled since this fire was decided: the new time is owed
        return [task.run_at], False
    if task.type != TaskType.RECURRING or not in_window(task, fire.occurrence):
        return None
    if newest is not None and fire.occurrence < newest:
        # The ledger only moves forward: an occurrence older than the newest recorded
        # one (a clock stepped back, a stale beat) is never started after it.
        return None
    candidates, dropped = _missed(task, fire.since, fire.occurrence)
    candidates.append(fire.occurrence)
    return candidates, dropped


def _known(
    plans: list[tuple[ScheduledTask, list[datetime]]], newest: dict[Any, datetime]
) -> set[tuple[Any, Any]]:
    """(task, occurrence) pairs of the candidates already in the ledger. A candidate
    after the task's newest recorded occurrence cannot be there: only tasks with older
    candidates are looked up."""
    asked = [(task, moments) for task, moments in plans if moments[0] <= newest[task.pk]]
    if not asked:
        return set()
    moments = {moment for _, candidates in asked for moment in candidates}
    return set(
        TaskExecution.objects.filter(
            task__in=[task.pk for task, _ in asked],
            trigger=ExecutionTrigger.SCHEDULED,
            scheduled_for__in=moments,
        ).values_list("task", "scheduled_for")
    )


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
    previous = _previous(task.cron, task.timezone, occurrence)
    if previous is None or previous <= floor:
        return [], False  # the usual fire: nothing was missed
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


@functools.lru_cache(maxsize=4096)
def _previous(expression: str, zone: str, occurrence: datetime) -> datetime | None:
    """The fire before ``occurrence``: shared by the tasks of a burst with one schedule."""
    return next(cronlib.Cron(expression, zone)._backward(occurrence - _MICRO), None)  # noqa: SLF001


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


def _apply_overlaps(decided: list[tuple[ScheduledTask, list[Decision]]]) -> None:
    """The overlap policy over each recurring task's runs, in time order: the tasks'
    unfinished runs are read in one query."""
    checked = [
        (task, runs)
        for task, decisions in decided
        if task.type == TaskType.RECURRING
        and task.overlap_policy != OverlapPolicy.ALLOW
        and (runs := [d for d in decisions if d.outcome == RUN])
    ]
    if not checked:
        return
    busy: dict[Any, TaskExecution] = {}
    waiting: set[Any] = set()
    for execution in TaskExecution.objects.filter(
        task__in=[task.pk for task, _ in checked], status__in=UNFINISHED
    ).order_by("queued_at"):
        if execution.held:
            waiting.add(execution.task_id)
        else:
            busy.setdefault(execution.task_id, execution)
    for task, runs in checked:
        backlog = task.misfire_policy == MisfirePolicy.RUN_ALL and len(runs) > 1
        _apply_overlap(task, runs, busy.get(task.pk), task.pk in waiting, backlog=backlog)


def _apply_overlap(
    task: ScheduledTask,
    runs: list[Decision],
    busy: TaskExecution | Decision | None,
    waiting: bool,
    *,
    backlog: bool,
) -> None:
    """While a run is going, later occurrences wait (queue, catch-up backlog) or are
    skipped; ``allow`` lets them all run."""
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


def _record(
    task: ScheduledTask, decisions: list[Decision], now: datetime, written: list[TaskExecution]
) -> list[Publication]:
    """The task's ledger rows (added to ``written``, created by the caller) and the
    runs to send."""
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
    written.extend(rows)
    if task.type == TaskType.ONE_TIME and rows[-1].status == ExecutionStatus.SKIPPED:
        # Its one occurrence will never run: the task is done.
        ScheduledTask.objects.filter(pk=task.pk).update(
            status=TaskStatus.COMPLETED, next_run=None, updated_at=now
        )
        task.status = TaskStatus.COMPLETED
    return publications


def _after_fires(tasks: list[ScheduledTask], now: datetime) -> None:
    """Advance ``next_run`` past this fire (one update per distinct time); past the last
    occurrence of its window a recurring task is completed (its beat row goes with the
    schedule sync)."""
    from .schedules import compute_next_run

    moved: dict[datetime | None, list[Any]] = {}
    upcoming: dict[tuple[Any, ...], datetime | None] = {}
    for task in tasks:
        if task.type != TaskType.RECURRING or task.status != TaskStatus.ACTIVE:
            continue
        key = (task.cron, task.timezone, task.start_at, task.end_at)
        if key not in upcoming:  # tasks of one burst share their schedules
            upcoming[key] = compute_next_run(task, now=now)
        task.next_run = upcoming[key]
        moved.setdefault(task.next_run, []).append(task.pk)
        if task.next_run is None and task.end_at is not None:
            task.status = TaskStatus.COMPLETED
            task.save(update_fields=["status", "updated_at"])
    for next_run, pks in moved.items():
        ScheduledTask.objects.filter(pk__in=pks).update(next_run=next_run)


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
