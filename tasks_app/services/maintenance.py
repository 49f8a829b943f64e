"""Operators' maintenance: pruning old executions, exporting and importing task
definitions, and backfilling a recurring task over a past window.

The management commands of the same names are thin wrappers around these services.
Long work reports progress through a :class:`ProgressFactory` (tqdm bars on a terminal,
silent by default). The export/import format is the API's task JSON
(``api.payloads``) so a file reads and validates exactly like ``POST /api/tasks``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from io import TextIOBase
from typing import IO, Any, Protocol
from zoneinfo import ZoneInfo

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, Q, QuerySet, Window
from django.db.models.functions import Coalesce, RowNumber
from django.utils import timezone
from tqdm import tqdm

from .. import cron as cronlib
from ..models import (
    ExecutionStatus,
    ExecutionTrigger,
    ScheduledTask,
    TaskExecution,
    TaskStatus,
    TaskType,
    WebhookDelivery,
)
from .definitions import task_create, task_pause
from .dispatch import execution_publish
from .executions import execution_for_occurrence, execution_take_publication

FINISHED = (ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.SKIPPED)
EXPORT_VERSION = 1
REQUIRED = ("name", "type", "action")


class MaintenanceError(Exception):
    """The maintenance request cannot be carried out as asked (nothing was changed)."""


class ProgressFactory(Protocol):
    """Makes a tqdm-like bar: a context manager with ``update(n)``."""

    def __call__(self, total: int | None, desc: str, unit: str = "it") -> Any: ...


def quiet(total: int | None, desc: str, unit: str = "it") -> Any:
    """A disabled bar: the services' default."""
    return tqdm(total=total, desc=desc, unit=unit, disable=True)


def progress_bars(stream: IO[str] | TextIOBase, *, enabled: bool) -> ProgressFactory:
    """Bars drawn on ``stream`` (normally stderr), or none when ``enabled`` is false."""

    def make(total: int | None, desc: str, unit: str = "it") -> Any:
        return tqdm(total=total, desc=desc, unit=unit, file=stream, disable=not enabled, leave=True)

    return make


def command_progress(stderr: TextIOBase, *, no_progress: bool) -> ProgressFactory:
    """Bars for a management command: on its stderr when that is a terminal and
    ``--no-progress`` was not given (Django's OutputWrapper is unwrapped: it would add a
    newline and the error colour to every redraw)."""
    stream = getattr(stderr, "_out", stderr)
    return progress_bars(stream, enabled=not no_progress and stderr.isatty())


# --- cleanup ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CleanupResult:
    executions: int
    deliveries: int
    dry_run: bool


def executions_cleanup(
    *,
    keep: int,
    older_than_days: int,
    batch: int = 1000,
    dry_run: bool = False,
    now: datetime | None = None,
    progress: ProgressFactory = quiet,
) -> CleanupResult:
    """Delete finished executions that are older than ``older_than_days`` days AND not
    among their task's ``keep`` newest; and webhook deliveries (replay records) older than
    ``max(older_than_days, 1)`` days. Queued, running and retrying executions stay."""
    if keep < 0 or older_than_days < 0 or batch < 1:
        raise MaintenanceError("keep and older-than-days must be >= 0, batch >= 1")
    now = now or timezone.now()
    scopes = list(_deletable_executions(keep=keep, cutoff=now - timedelta(days=older_than_days)))
    counts = [scope.count() for scope in scopes]
    deliveries = WebhookDelivery.objects.filter(
        received_at__lt=now - timedelta(days=max(older_than_days, 1))
    )
    if dry_run:
        return CleanupResult(sum(counts), deliveries.count(), dry_run=True)
    deleted = 0
    with progress(sum(counts), "executions", "row") as bar:
        for scope, count in zip(scopes, counts, strict=True):
            if count:
                deleted += _delete_in_batches(scope, batch=batch, bar=bar)
    with progress(deliveries.count(), "webhook deliveries", "row") as bar:
        pruned = _delete_in_batches(deliveries, batch=batch, bar=bar)
    return CleanupResult(deleted, pruned, dry_run=False)


def _deletable_executions(*, keep: int, cutoff: datetime) -> Iterator[QuerySet[TaskExecution]]:
    """The executions to delete, as one queryset per task that has more than ``keep``.

    One window-function pass finds each task's ``keep``-th newest execution (by
    ``queued_at``, then ``id``); everything of that task after it in that order, finished
    and older than ``cutoff``, may go. The per-task queries use the (task, -queued_at) index.
    """
    old = (
        TaskExecution.objects.alias(finished_at=Coalesce("completed_at", "queued_at"))
        .filter(status__in=FINISHED, finished_at__lt=cutoff)
        .order_by()
    )
    if keep == 0:
        yield old
        return
    boundaries = (
        TaskExecution.objects.annotate(
            position=Window(
                RowNumber(),
                partition_by=[F("task_id")],
                order_by=[F("queued_at").desc(), F("id").desc()],
            )
        )
        .filter(position=keep)
        .values_list("task_id", "queued_at", "id")
    )
    for task_id, queued_at, pk in boundaries:
        yield old.filter(task_id=task_id).filter(
            Q(queued_at__lt=queued_at) | Q(queued_at=queued_at, id__lt=pk)
        )


def _delete_in_batches(scope: QuerySet[Any], *, batch: int, bar: Any) -> int:
    """Delete ``scope`` ``batch`` primary keys at a time, each batch in its own short
    transaction, through Django's delete so the models' on_delete rules apply. (Rows once
    in scope stay in it: finished is final, age only grows, newer runs only push older
    ones further past the kept ones.)"""
    deleted = 0
    model = scope.model
    label = model._meta.label
    while True:
        pks = list(scope.values_list("pk", flat=True)[:batch])
        if not pks:
            return deleted
        with transaction.atomic():
            _, per_model = model._base_manager.filter(pk__in=pks).only("pk").delete()
        done = per_model.get(label, 0)
        if not done:
            return deleted
        deleted += done
        bar.update(done)


# --- export / import ------------------------------------------------------------------------


def tasks_export(
    *, owner: User | None = None, now: datetime | None = None, progress: ProgressFactory = quiet
) -> dict[str, Any]:
    """The definitions of ``owner``'s tasks (everyone's without one) as an export document:
    the API's task JSON without its runtime fields."""
    from ..api.payloads import READ_ONLY, task_to_json

    tasks = ScheduledTask.objects.select_related("owner").order_by("created_at", "id")
    if owner is not None:
        tasks = tasks.filter(owner=owner)
    exported = []
    with progress(tasks.count(), "export", "task") as bar:
        for task in tasks.iterator(chunk_size=500):
            data = task_to_json(task)
            exported.append({key: value for key, value in data.items() if key not in READ_ONLY})
            bar.update(1)
    return {
        "version": EXPORT_VERSION,
        "exportedAt": (now or timezone.now()).isoformat(),
        "tasks": exported,
    }


@dataclass
class ImportResult:
    imported: int = 0
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dry_run: bool = False


def tasks_import(
    *,
    document: Any,
    owner: User,
    dry_run: bool = False,
    paused: bool = False,
    skip_past: bool = False,
    now: datetime | None = None,
    progress: ProgressFactory = quiet,
) -> ImportResult:
    """Create every task of an export document for ``owner``, all or nothing.

    Each task goes through the API's parsing and ``task_create`` (its validation, its
    beat row) inside one transaction; errors are collected as ``tasks[i].<path>: reason``
    and, if there are any (or on a dry run), the transaction is rolled back. ``userId`` in
    the file is ignored: ``owner`` owns what is imported.
    """
    items = _task_list(document)
    now = now or timezone.now()
    result = ImportResult(dry_run=dry_run)
    with transaction.atomic():
        with progress(len(items), "import", "task") as bar:
            for index, item in enumerate(items):
                _import_one(index, item, owner, result, paused=paused, skip_past=skip_past, now=now)
                bar.update(1)
        if result.errors or dry_run:
            transaction.set_rollback(True)
    if result.errors:
        result.imported = 0
    return result


def _task_list(document: Any) -> list[Any]:
    if isinstance(document, list):
        return document
    if not isinstance(document, dict) or not isinstance(document.get("tasks"), list):
        raise MaintenanceError(
            'the file must be an export_tasks document ({"version": 1, "tasks": [...]})'
            " or a JSON list of tasks"
        )
    if document.get("version", EXPORT_VERSION) != EXPORT_VERSION:
        raise MaintenanceError(f"unsupported export version {document.get('version')!r}")
    return list(document["tasks"])


def _import_one(
    index: int,
    item: Any,
    owner: User,
    result: ImportResult,
    *,
    paused: bool,
    skip_past: bool,
    now: datetime,
) -> None:
    from ..api.payloads import PayloadError, parse_task

    prefix = f"tasks[{index}]"
    try:
        fields = parse_task(item)
    except PayloadError as exc:
        result.errors.extend(_prefixed(prefix, exc.errors))
        return
    missing = {key: ["is required"] for key in REQUIRED if key not in fields}
    if missing:
        result.errors.extend(_prefixed(prefix, missing))
        return
    run_at = fields.get("run_at")
    if fields["type"] == TaskType.ONE_TIME and run_at is not None and run_at <= now:
        if skip_past:
            result.skipped.append(f"{prefix}: schedule.at {run_at.isoformat()} is in the past")
            return
        result.errors.extend(_prefixed(prefix, {"schedule.at": ["is in the past"]}))
        return
    try:
        with transaction.atomic():
            task = task_create(owner=owner, **fields)
            if paused:
                task_pause(task=task)
    except ValidationError as exc:
        errors = exc.message_dict if hasattr(exc, "error_dict") else {"": exc.messages}
        result.errors.extend(_prefixed(prefix, errors))
        return
    result.imported += 1


def _prefixed(prefix: str, errors: dict[str, list[str]]) -> list[str]:
    lines: list[str] = []
    for path, messages in errors.items():
        where = prefix if path in {"", "(body)"} else f"{prefix}.{path}"
        if path.startswith("["):
            where = f"{prefix}{path}"
        lines.extend(f"{where}: {message}" for message in messages)
    return lines


# --- backfill ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackfillResult:
    occurrences: int
    recorded_before: int
    queued: int
    dry_run: bool

    @property
    def missing(self) -> int:
        return self.occurrences - self.recorded_before


def task_backfill(
    *,
    task_id: str | uuid.UUID,
    start: datetime,
    end: datetime,
    max_occurrences: int = 1000,
    dry_run: bool = False,
    now: datetime | None = None,
    progress: ProgressFactory = quiet,
) -> BackfillResult:
    """Record and queue every occurrence of a recurring task in ``[start, end)`` that has
    no execution yet (naive times are read in the task's timezone).

    Each missing occurrence gets its ledger row (``execution_for_occurrence``, as beat
    does) and one run message after commit; occurrences already recorded are left alone,
    so running it twice queues nothing new.
    """
    task = _backfill_task(task_id)
    zone = ZoneInfo(task.timezone)
    start, end = _aware(start, zone), _aware(end, zone)
    now = now or timezone.now()
    if start >= end:
        raise MaintenanceError("--start must be before --end")
    if end > now:
        raise MaintenanceError(
            f"the window ends in the future ({end.isoformat()}); beat runs future "
            "occurrences, backfill only past ones"
        )
    fires = cronlib.parse(task.cron, task.timezone).upcoming(
        start - timedelta(microseconds=1), max_occurrences + 1, before=end
    )
    if len(fires) > max_occurrences:
        raise MaintenanceError(
            f"more than {max_occurrences} occurrences in the window; narrow it or raise --max"
        )
    recorded = set(
        TaskExecution.objects.filter(
            task=task,
            trigger=ExecutionTrigger.SCHEDULED,
            scheduled_for__gte=start,
            scheduled_for__lt=end,
        ).values_list("scheduled_for", flat=True)
    )
    missing = [fire for fire in fires if fire not in recorded]
    queued = 0
    if not dry_run:
        with transaction.atomic(), progress(len(missing), "backfill", "run") as bar:
            for fire in missing:
                execution = execution_for_occurrence(task_id=task.pk, scheduled_for=fire)
                if execution is not None and execution_take_publication(execution=execution):
                    execution_publish(execution=execution, attempt=1)
                    queued += 1
                bar.update(1)
    return BackfillResult(len(fires), len(fires) - len(missing), queued, dry_run=dry_run)


def _backfill_task(task_id: str | uuid.UUID) -> ScheduledTask:
    try:
        pk = uuid.UUID(str(task_id))
    except ValueError:
        raise MaintenanceError(f"{task_id!r} is not a task id") from None
    task = ScheduledTask.objects.filter(pk=pk).first()
    if task is None:
        raise MaintenanceError(f"no task {pk}")
    if task.type != TaskType.RECURRING:
        raise MaintenanceError(f"task {pk} is {task.type}; only recurring tasks have a backlog")
    if task.status != TaskStatus.ACTIVE:
        raise MaintenanceError(
            f"task {pk} is {task.status}; resume it first (a paused task's occurrences "
            "are recorded as skipped)"
        )
    return task


def _aware(moment: datetime, zone: ZoneInfo) -> datetime:
    return moment.replace(tzinfo=zone) if timezone.is_naive(moment) else moment
