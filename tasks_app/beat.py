"""The beat scheduler: django-celery-beat's DatabaseScheduler, with our task's cron
entries evaluated by :mod:`tasks_app.cron`.

Each fire of a task is first written to the execution ledger under its nominal
occurrence (one row per task and occurrence), then published by whoever wrote it: two
beats or a restarted beat never run an occurrence twice, and a message the broker loses
is re-published from the ledger by the recovery job.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from celery import schedules
from celery.utils.log import get_logger
from django.db import DatabaseError
from django.utils import timezone
from django_celery_beat.schedulers import DatabaseScheduler, ModelEntry

from . import cron as cronlib
from .conf import RUN_TASK_NAME
from .services import executions

logger = get_logger(__name__)


class CronSchedule(schedules.BaseSchedule):
    """A celery schedule driven by our cron semantics in the entry's timezone."""

    def __init__(self, cron: cronlib.Cron, app: Any = None) -> None:
        self.cron = cron
        super().__init__(app=app)

    def occurrence(self, now: datetime) -> datetime | None:
        return self.cron.latest_at_or_before(now)

    def remaining_estimate(self, last_run_at: datetime) -> Any:
        now = self.now()
        upcoming = self.cron.next_after(max(now, last_run_at))
        return (upcoming - now) if upcoming else None

    def is_due(self, last_run_at: datetime) -> schedules.schedstate:
        now = self.now()
        latest = self.occurrence(now)
        upcoming = self.cron.next_after(now)
        wait = (upcoming - now).total_seconds() if upcoming else 3600.0
        return schedules.schedstate(bool(latest and latest > last_run_at), max(wait, 0.05))

    def __repr__(self) -> str:
        return f"<cron: {self.cron.expression} {self.cron.timezone}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CronSchedule) and other.cron == self.cron

    def __hash__(self) -> int:
        return hash(self.cron)


class Entry(ModelEntry):
    def __init__(self, model: Any, app: Any = None) -> None:
        super().__init__(model, app=app)
        if model.task == RUN_TASK_NAME and model.crontab_id:
            tab = model.crontab
            expression = " ".join(
                (tab.minute, tab.hour, tab.day_of_month, tab.month_of_year, tab.day_of_week)
            )
            self.schedule = CronSchedule(cronlib.Cron(expression, str(tab.timezone)), app=self.app)

    def save(self) -> None:
        """Write beat's bookkeeping back, unless the row was edited since this entry was
        loaded: then the edit (a schedule sync resetting ``last_run_at``, re-arming a
        one-off) wins instead of being overwritten with stale counters."""
        model = self.model
        changed_at = timezone.now()
        written = (
            type(model)
            ._default_manager.filter(pk=model.pk, date_changed=model.date_changed)
            .update(
                last_run_at=model.last_run_at,
                total_run_count=model.total_run_count,
                date_changed=changed_at,
            )
        )
        if written:
            model.date_changed = changed_at

    def occurrence(self) -> datetime | None:
        if isinstance(self.schedule, CronSchedule):
            return self.schedule.occurrence(datetime.now(UTC))
        if self.model.clocked_id:
            return self.model.clocked.clocked_time
        return None


class Scheduler(DatabaseScheduler):
    Entry = Entry

    def apply_async(
        self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        if entry.task != RUN_TASK_NAME:
            return super().apply_async(entry, producer, advance, **kwargs)
        occurrence = entry.occurrence()
        if advance:
            entry = self.reserve(entry)
        if occurrence is None:
            return None
        # The entry handed in here is the one being sent (a fresh one is kept in the
        # schedule), so changing its kwargs affects this message only.
        try:
            # (DatabaseScheduler.schedule already renewed stale connections this tick.)
            execution = executions.execution_for_occurrence(
                task_id=entry.kwargs.get("task_id"), scheduled_for=occurrence
            )
            if execution is None or not executions.execution_take_publication(execution=execution):
                return None  # task gone or paused, or the occurrence was recorded already
            entry.kwargs = {"execution_id": str(execution.pk), "attempt": 1}
        except DatabaseError:
            logger.exception("could not record %s at %s; the worker will", entry.name, occurrence)
            entry.kwargs = {**entry.kwargs, "scheduled_for": occurrence.isoformat()}
        return super().apply_async(entry, producer, advance=False, **kwargs)
