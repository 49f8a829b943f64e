"""The beat scheduler: django-celery-beat's DatabaseScheduler, with our task's cron
entries evaluated by :mod:`tasks_app.cron`.

Each fire of a task is first written to the execution ledger under its nominal
occurrence (one row per task and occurrence), then published by whoever wrote it: two
beats or a restarted beat never run an occurrence twice, and a message the broker loses
is re-published from the ledger by the recovery job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import schedules
from celery.utils.log import get_logger
from django.db import DatabaseError
from django.utils import timezone
from django_celery_beat.schedulers import DatabaseScheduler, ModelEntry

from . import cron as cronlib
from .conf import RUN_TASK_NAME
from .services import occurrences

logger = get_logger(__name__)
_MICRO = timedelta(microseconds=1)


class CronSchedule(schedules.BaseSchedule):
    """A celery schedule driven by our cron semantics in the entry's timezone, inside
    the task's window (``start``/``end``: its startAt/endAt)."""

    def __init__(
        self,
        cron: cronlib.Cron,
        app: Any = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> None:
        self.cron = cron
        self.start, self.end = start, end
        super().__init__(app=app)

    def occurrence(self, now: datetime) -> datetime | None:
        latest = self.cron.latest_at_or_before(min(now, self.end) if self.end else now)
        if latest is None or (self.start is not None and latest < self.start):
            return None
        return latest

    def _upcoming(self, now: datetime) -> datetime | None:
        after = max(now, self.start - _MICRO) if self.start else now
        upcoming = self.cron.next_after(after)
        if upcoming is None or (self.end is not None and upcoming > self.end):
            return None
        return upcoming

    def remaining_estimate(self, last_run_at: datetime) -> Any:
        now = self.now()
        upcoming = self._upcoming(max(now, last_run_at))
        return (upcoming - now) if upcoming else None

    def is_due(self, last_run_at: datetime) -> schedules.schedstate:
        now = self.now()
        latest = self.occurrence(now)
        upcoming = self._upcoming(now)
        wait = (upcoming - now).total_seconds() if upcoming else 3600.0
        return schedules.schedstate(bool(latest and latest > last_run_at), max(wait, 0.05))

    def __repr__(self) -> str:
        return f"<cron: {self.cron.expression} {self.cron.timezone}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CronSchedule) and (other.cron, other.start, other.end) == (
            self.cron,
            self.start,
            self.end,
        )

    def __hash__(self) -> int:
        return hash((self.cron, self.start, self.end))


class Entry(ModelEntry):
    def __init__(self, model: Any, app: Any = None) -> None:
        super().__init__(model, app=app)
        if model.task == RUN_TASK_NAME and model.crontab_id:
            tab = model.crontab
            expression = " ".join(
                (tab.minute, tab.hour, tab.day_of_month, tab.month_of_year, tab.day_of_week)
            )
            # The row's start_time/expires are the task's startAt/endAt (its window).
            self.schedule = CronSchedule(
                cronlib.Cron(expression, str(tab.timezone)),
                app=self.app,
                start=model.start_time,
                end=model.expires,
            )
        if model.task == RUN_TASK_NAME:
            self.options.pop("expires", None)  # a late run message must still run

    def is_due(self) -> schedules.schedstate:
        """Our cron entries keep to their window themselves (ModelEntry would disable an
        expired row with a full save, racing the schedule sync)."""
        if isinstance(self.schedule, CronSchedule):
            if not self.model.enabled:
                return schedules.schedstate(False, 5.0)
            return self.schedule.is_due(self.last_run_at)
        return super().is_due()

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


@dataclass(frozen=True)
class Message:
    """One message of an entry (what Scheduler.apply_async reads of it): the entry kept
    in the schedule is left as it is."""

    name: str
    task: str
    args: Any
    kwargs: dict[str, Any]
    options: dict[str, Any]


class Scheduler(DatabaseScheduler):
    Entry = Entry

    def apply_async(
        self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        if entry.task != RUN_TASK_NAME:
            return super().apply_async(entry, producer, advance, **kwargs)
        since = entry.last_run_at  # the previous fire (beat's tick hands in the old entry)
        occurrence = entry.occurrence()
        if advance:
            entry = self.reserve(entry)
        if occurrence is None:
            return None
        try:
            # (DatabaseScheduler.schedule already renewed stale connections this tick.)
            runs = occurrences.occurrence_fire(
                task_id=entry.kwargs.get("task_id"),
                occurrence=occurrence,
                since=since if isinstance(since, datetime) else None,
            )
        except DatabaseError:
            logger.exception("could not record %s at %s; the worker will", entry.name, occurrence)
            fallback = {**entry.kwargs, "scheduled_for": occurrence.isoformat()}
            return super().apply_async(
                Message(entry.name, entry.task, entry.args, fallback, entry.options),
                producer,
                advance=False,
                **kwargs,
            )
        result = None
        for run in runs:
            options = {**entry.options, "countdown": run.countdown} if run.countdown else {}
            message = Message(
                entry.name, entry.task, entry.args, run.kwargs, options or entry.options
            )
            result = super().apply_async(message, producer, advance=False, **kwargs)
        return result
