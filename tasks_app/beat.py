"""The beat scheduler: django-celery-beat's DatabaseScheduler, with our task's cron
entries evaluated by :mod:`tasks_app.cron`.

Each fire of a task is first written to the execution ledger under its nominal
occurrence (one row per task and occurrence), then published by whoever wrote it: two
beats or a restarted beat never run an occurrence twice, and a message the broker loses
is re-published from the ledger by the recovery job.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import heapq
import json
import math
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import beat as celery_beat
from celery import schedules
from celery.utils.log import get_logger
from django.conf import settings
from django.db import (
    DatabaseError,
    InterfaceError,
    close_old_connections,
    connection,
    connections,
)
from django.utils import timezone
from django_celery_beat.schedulers import DatabaseScheduler, ModelEntry

from . import cron as cronlib
from .conf import RUN_TASK_NAME, runs_ignore_result
from .services import occurrences
from .slots import Slot, SlotTable

logger = get_logger(__name__)
#: per schedule, the fires around a moment: (latest at or before, next after, its float)
Shared = dict[cronlib.Cron, tuple[datetime | None, datetime | None, float | None]]
_MICRO = timedelta(microseconds=1)


def window_occurrence(
    cron: cronlib.Cron,
    moment: datetime,
    start: datetime | None,
    end: datetime | None,
    latest_of: dict[cronlib.Cron, datetime | None] | None = None,
) -> datetime | None:
    """The latest fire of ``cron`` at ``moment`` inside the window ``start``..``end`` (a
    task's startAt/endAt). ``latest_of`` shares the walk among the slots of one schedule
    fired at one moment (a burst)."""
    if end is not None and end < moment:
        latest = cron.latest_at_or_before(end)
    elif latest_of is not None and cron in latest_of:
        latest = latest_of[cron]
    else:
        latest = cron.latest_at_or_before(moment)
        if latest_of is not None:
            latest_of[cron] = latest
    if latest is None or (start is not None and latest < start):
        return None
    return latest


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
        return window_occurrence(self.cron, now, self.start, self.end)

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


#: marks a row the watcher hands over because the schedule it uses has changed
_RETAKE = "_retake"
_CRONTAB_FIELDS = (
    "crontab__minute",
    "crontab__hour",
    "crontab__day_of_month",
    "crontab__month_of_year",
    "crontab__day_of_week",
    "crontab__timezone",
)
#: the values of other jobs' interval and solar schedules, read only for them (an edit of
#: a shared schedule row moves only django-celery-beat's change marker, not the job's
#: date_changed)
_OTHER_SCHEDULE_FIELDS = (
    "interval__every",
    "interval__period",
    "solar__event",
    "solar__latitude",
    "solar__longitude",
)
_SCHEDULE_FIELDS = (*_OTHER_SCHEDULE_FIELDS, *_CRONTAB_FIELDS, "clocked__clocked_time")

_ROW_FIELDS = (
    "id",
    "name",
    "task",
    "kwargs",
    "enabled",
    "one_off",
    "crontab_id",
    *_CRONTAB_FIELDS,
    "clocked_id",
    "clocked__clocked_time",
    "interval_id",
    "solar_id",
    "start_time",
    "expires",
    "last_run_at",
    "total_run_count",
    "date_changed",
    "queue",
    "exchange",
    "routing_key",
    "priority",
    "headers",
)


#: A fire whose runs are already due when built flushes its publish batch this often.
LATE_FLUSH_EVERY = 50


class Scheduler(DatabaseScheduler):
    """django-celery-beat's rows, scheduled for 100,000 of them.

    * **Start-up** reads every enabled row once (plain values, no model objects) and keeps
      each of our tasks' rows as a small :class:`Slot` in a heap ordered by due time;
      schedules shared by many tasks (one cron in one timezone) are computed once.
    * **Changes**: every ``SCHEDULER_BEAT_POLL_SECONDS`` the rows whose ``date_changed``
      moved (indexed, with a look-back for transactions that committed late) replace
      their slots; nothing else is re-read. Before a fire the due rows are checked once
      more, so a deleted or just-edited row never fires from a stale slot.
    * **Bursts**: due slots are fired in batches of ``SCHEDULER_BEAT_BATCH`` (one
      transaction, a fixed number of queries, :func:`occurrences.occurrences_fire`), sent
      through one producer, and beat's bookkeeping (``last_run_at``/``total_run_count``)
      is written for the batch in one statement that never overwrites an edit.
    * **On time**: a due slot's occurrence is recorded up to ``lead``
      (``SCHEDULER_BEAT_LEAD_MS``, 100 ms) before its time and the message sent at its
      time, so the database work does not delay it.
    * Rows of other tasks (the project's own periodic jobs, intervals, solar schedules)
      stay django-celery-beat entries, evaluated as celery does.

    Rows changed with a bulk ``update()`` must set ``date_changed`` too (django-celery-beat
    asks for ``PeriodicTasks.update_changed()`` instead, which forces its full reload).
    """

    Entry = Entry

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = SlotTable()
        self._generic: dict[int, Entry] = {}
        self._generic_dirty: set[int] = set()
        self._generic_due: dict[int, float] = {}  # each entry's live heap item
        # (due, row pk); a negative pk is an entry celery evaluates. A slot's items other
        # than its live one (SlotTable.current) are stale and skipped.
        self._heap: list[tuple[float, int]] = []
        self._watermark: datetime | None = None
        self._delivered: dict[int, datetime] = {}  # rows in the look-back, handed over
        self._marker: datetime | None = None  # django-celery-beat's PeriodicTasks stamp
        self._schedules: dict[int, tuple[Any, ...]] = {}  # other rows' schedules (watcher)
        self._changes: queue.SimpleQueue[list[dict[str, Any]]] = queue.SimpleQueue()
        self._watcher: threading.Thread | None = None
        self._stopping = threading.Event()
        self._loaded = False
        self.poll_seconds = float(settings.SCHEDULER_BEAT_POLL_SECONDS)
        self.lookback = timedelta(seconds=settings.SCHEDULER_BEAT_LOOKBACK_SECONDS)
        self.batch = max(int(settings.SCHEDULER_BEAT_BATCH), 1)
        #: a due slot's occurrence is recorded this long before its time and its run sent
        #: on time, so the database work does not make it late
        self.lead = max(int(settings.SCHEDULER_BEAT_LEAD_MS), 0) / 1000
        #: how long the last tick waited on purpose (for a decided run's time)
        self.waited = 0.0
        super().__init__(*args, **kwargs)
        # No "task-sent" event per message: half the broker writes of a burst. The ledger
        # records every fire; Flower shows beat's runs from "received" on.
        self.app.conf.task_send_sent_event = False

    # --- loading -------------------------------------------------------------------

    def setup_schedule(self) -> None:
        super().setup_schedule()  # the static beat_schedule entries become rows
        self._load()
        self._warm_up()
        _freeze_loaded()

    def _warm_up(self) -> None:
        """Before the first due run, what its send would do first: find the result
        backend (celery scans the installed packages' entry points for it: 10–40 ms),
        connect the producer and declare the runs' queue. A cold first send made the first
        run that late. A broker that does not answer at once is left to the first send, as
        celery beat does."""
        try:
            self.app.backend  # noqa: B018 - (loaded on first use)
            # (kombu's Redis sockets wait forever by default: bound this one)
            timeouts = {"socket_connect_timeout": 2, "socket_timeout": 2}
            with self.app.connection_for_write(transport_options=timeouts) as probe:
                probe.ensure_connection(max_retries=1, interval_start=0, timeout=2)
            queue = self.app.amqp.router.route({}, RUN_TASK_NAME)["queue"]
            self.producer.maybe_declare(queue)
        except Exception:  # noqa: BLE001 - only a head start; sends connect as they always did
            logger.warning(
                "beat: could not ready the first send (the broker did not answer yet?); "
                "the first send connects",
                exc_info=True,
            )

    @property
    def schedule(self) -> dict[str, Any]:
        """The rows celery evaluates itself, by name (our tasks' slots are not entries)."""
        return {entry.name: entry for entry in self._generic.values()}

    def _load(self) -> None:
        self._loaded = True
        self._slots.clear()
        self._generic.clear()
        self._generic_due.clear()
        self._heap = []
        now = time.time()
        shared: Shared = {}
        newest = None
        recent = timezone.now() - self.lookback
        self._marker = self.Changes.last_change()
        self._schedules = {row["id"]: _schedule_of(row) for row in self._other_rows()}
        rows = self.Model.objects.filter(enabled=True).values(*_ROW_FIELDS)
        for row in rows.iterator(chunk_size=2000):
            changed = row["date_changed"]
            newest = changed if newest is None else max(newest, changed)
            if changed >= recent:  # the watcher's look-back need not hand it over again
                self._delivered[row["id"]] = changed
            self._take(row, now, shared)
        heapq.heapify(self._heap)
        _release_freed_memory()  # the rows read are gone: give their pages back
        # From the load's start: rows committed while it read are read again.
        self._watermark = min(newest, recent + self.lookback) if newest else timezone.now()
        if self._watcher is None and self.poll_seconds > 0:
            self._watcher = threading.Thread(target=self._watch, name="beat-changes", daemon=True)
            self._watcher.start()
        logger.info(
            "beat: %d task schedules and %d other entries loaded",
            len(self._slots),
            len(self._generic),
        )

    def _cron(self, row: dict[str, Any]) -> cronlib.Cron:
        expression = " ".join(
            row[f"crontab__{field}"]
            for field in ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
        )
        return cronlib.Cron(expression, str(row["crontab__timezone"]))  # (SlotTable interns)

    def _take(
        self,
        row: dict[str, Any],
        now: float,
        shared: Shared | None = None,
        push: Callable[[list[Any], Any], None] = list.append,
    ) -> None:
        """Keep ``row`` (a slot, or an entry celery evaluates) and queue its next fire."""
        pk = row["id"]
        before = self._slots.due(pk)  # its live heap item's time, if it has one
        self._slots.pop(pk)
        previous = self._generic.pop(pk, None)
        if not row["enabled"]:
            return
        task_id = _our_task_id(row)
        if task_id is None or not (row["crontab_id"] or row["clocked_id"]):
            try:
                model = self.Model.objects.filter(pk=pk).first()
            except (DatabaseError, InterfaceError):
                if previous is not None:
                    self._generic[pk] = previous  # kept (with its last run) until then
                self._changes.put([row])  # taken in again on the next tick
                return
            if model is not None:
                try:
                    entry = self.Entry(model, app=self.app)
                except ValueError:
                    return
                if previous is not None:
                    _keep_runs(entry, previous)
                self._generic[pk] = entry
                self._generic_due[pk] = now
                push(self._heap, (now, -pk))
            return
        cron = self._cron(row) if row["crontab_id"] else None
        last_run = row["last_run_at"]
        slot = Slot(
            pk,
            task_id,
            cron,
            clocked=None if cron else row["clocked__clocked_time"],
            start=row["start_time"] if cron else None,
            end=row["expires"] if cron else None,
            last_run=last_run.timestamp() if last_run else None,
            changed=row["date_changed"],
            one_off=row["one_off"] or cron is None,
        )
        self._slots.put(slot)
        if slot.cron is None:
            due = slot.clocked.timestamp() if slot.clocked and not row["total_run_count"] else None
        else:
            due = self._due(slot, now, shared)
        if due is not None:
            self._slots.queue(pk, due)
            if due != before:  # (an unchanged time: its item in the heap is live again)
                push(self._heap, (due, pk))

    def _due(self, slot: Slot, now: float, shared: Shared | None = None) -> float | None:
        """When the slot's next occurrence after its previous fire is due (a time in the
        past when one was missed). Slots of one schedule share the walk from ``now``
        (and the float it ends in: one object for the thousands of a burst)."""
        assert slot.cron is not None
        last = slot.last_run if slot.last_run is not None else now
        after = datetime.fromtimestamp(last, UTC)
        if slot.start is not None and after < slot.start:
            after = slot.start - _MICRO
        if shared is not None and last <= now and slot.start is None:
            walk = shared.get(slot.cron)
            if walk is None:
                moment = datetime.fromtimestamp(now, UTC)
                upcoming = slot.cron.next_after(moment)
                walk = shared[slot.cron] = (
                    slot.cron.latest_at_or_before(moment),
                    upcoming,
                    upcoming.timestamp() if upcoming else None,
                )
            previous, upcoming, stamp = walk
            if previous is None or after >= previous:
                if upcoming is None or (slot.end is not None and upcoming > slot.end):
                    return None
                return stamp
        upcoming = slot.cron.next_after(after)  # (one was missed: due now)
        if upcoming is None or (slot.end is not None and upcoming > slot.end):
            return None
        return upcoming.timestamp()

    # --- the loop ------------------------------------------------------------------

    def tick(self, *args: Any, **kwargs: Any) -> float:
        self.waited = 0.0
        if not self._loaded:
            self._load()
        while not self._changes.empty():
            self._apply(self._changes.get())
        heap, slots = self._heap, self._slots
        due: list[Slot] = []
        generic: list[int] = []
        now = time.time()
        latest = 0.0
        while heap and len(due) < self.batch:
            at, pk = heap[0]
            if at > now + (self.lead if pk > 0 else 0.0):  # (celery's entries: on time)
                break
            heapq.heappop(heap)
            if pk < 0:
                if self._generic_due.get(-pk) == at and -pk in self._generic:
                    generic.append(-pk)
            elif slots.current(pk, at):
                slots.queue(pk, None)  # taken: a second item for it is stale
                due.append(slots[pk])
                latest = max(latest, at)
        for pk in generic:
            try:
                self._tick_generic(pk)
            except (DatabaseError, InterfaceError):
                logger.exception("beat: could not check %s; trying again", pk)
                self._generic_due[pk] = retry = time.time() + self.max_interval
                heapq.heappush(heap, (retry, -pk))
        if due:
            try:
                self._fire(due, latest)
            except (DatabaseError, InterfaceError):  # the ledger keeps a retry exactly-once
                logger.exception("beat: the database failed while firing; trying again")
                retry = time.time() + self.max_interval
                for slot in due:
                    if slot.pk in slots and slots.due(slot.pk) is None:
                        slots.queue(slot.pk, retry)
                        heapq.heappush(heap, (retry, slot.pk))
        if len(heap) > 2 * (len(slots) + len(self._generic)) + 1000:
            self._compact()
            heap = self._heap
        wake = math.inf
        if heap:
            at, pk = heap[0]
            wake = at - (self.lead if pk > 0 else 0.0) - time.time()
            if wake <= 0:
                return 0
        # Changes are taken in on the next tick: wake at least as often as they are read.
        return max(min(wake, self.max_interval, self.poll_seconds or math.inf), 0.0)

    def _tick_generic(self, pk: int) -> None:
        entry = self._generic[pk]
        try:
            is_due, wait = self.is_due(entry)
        except Exception:  # noqa: BLE001 - one broken entry must not stop beat
            is_due, wait = self._is_due_failed(entry)
        if is_due:
            # A deleted row leaves no trace for the watcher; an edit may not be read yet.
            try:
                changed = (
                    self.Model.objects.filter(pk=pk, enabled=True)
                    .values_list("date_changed", flat=True)
                    .first()
                )
            except (DatabaseError, InterfaceError):
                changed = entry.model.date_changed  # send it as known: the database is away
            if changed is None:
                del self._generic[pk]
                return
            if changed != entry.model.date_changed:
                row = self.Model.objects.filter(pk=pk).values(*_ROW_FIELDS).first()
                if row is not None:
                    self._take(row, time.time(), push=heapq.heappush)
                return
            self._generic[pk] = self.reserve(entry)
            self.apply_entry(entry, producer=self.producer)
        wait = wait if isinstance(wait, int | float) and wait > 0 else self.max_interval
        self._generic_due[pk] = at = time.time() + wait
        heapq.heappush(self._heap, (at, -pk))

    def _compact(self) -> None:
        """Drop stale heap items (edits leave their old ones behind until their time)."""
        live = [(at, pk) for at, pk in self._heap if pk > 0 and self._slots.current(pk, at)]
        live += [(at, -pk) for pk, at in self._generic_due.items() if pk in self._generic]
        heapq.heapify(live)
        self._heap = live

    def reserve(self, entry: Any) -> Any:
        new_entry = next(entry)
        pk = getattr(entry.model, "pk", None)
        if pk in self._generic:
            self._generic[pk] = new_entry
            self._generic_dirty.add(pk)
        return new_entry

    def sync(self) -> None:
        """Write the other entries' bookkeeping (our slots' is written as they fire)."""
        try:
            close_old_connections()
            while self._generic_dirty:
                pk = self._generic_dirty.pop()
                entry = self._generic.get(pk)
                if entry is not None:
                    entry.save()
        except (DatabaseError, InterfaceError):
            logger.exception("beat: could not write the schedule's bookkeeping")

    def _watch(self) -> None:
        """The watcher thread: reads the changed rows every ``poll_seconds`` with its own
        connection, so a tick never waits on the database when nothing is due."""
        try:
            while not self._stopping.wait(self.poll_seconds):
                try:
                    close_old_connections()
                    rows = self._read_changes()
                except Exception:  # the watcher must outlive any one bad read
                    logger.exception("beat: reading the changed schedules failed")
                    continue
                if rows:
                    self._changes.put(rows)
        finally:
            connections.close_all()

    def _read_changes(self) -> list[dict[str, Any]]:
        """The rows changed since the newest change seen, and those changed within the
        look-back (a transaction may commit after a later one): ids and stamps first,
        whole rows only for what was not handed over already."""
        try:
            assert self._watermark is not None
            floor = min(self._watermark, timezone.now() - self.lookback)
            stamps = self.Model.objects.filter(date_changed__gte=floor).values_list(
                "id", "date_changed"
            )
            fresh = [pk for pk, changed in stamps if self._delivered.get(pk) != changed]
            rows = []
            for start in range(0, len(fresh), 500):
                chunk = fresh[start : start + 500]
                rows += self.Model.objects.filter(pk__in=chunk).values(*_ROW_FIELDS)
            rows += self._toggled({row["id"] for row in rows})
        except (DatabaseError, InterfaceError):
            logger.exception("beat: could not read the changed schedules")
            return []
        for row in rows:
            self._watermark = max(self._watermark, row["date_changed"])
            self._delivered[row["id"]] = row["date_changed"]
        self._delivered = {pk: at for pk, at in self._delivered.items() if at >= floor}
        return rows

    def _toggled(self, seen: set[int]) -> list[dict[str, Any]]:
        """The enabled rows of other tasks, when django-celery-beat's change marker moved:
        its admin actions enable rows with a bulk update that leaves date_changed alone,
        and an edited interval, crontab, solar or clocked schedule moves only the marker
        (so these rows are taken in again even with their date_changed as it was)."""
        marker = self.Changes.last_change()
        moved, self._marker = marker != self._marker, marker
        if not moved:
            return []
        rows = []
        for row in self._other_rows():
            schedule = _schedule_of(row)
            if self._schedules.get(row["id"]) != schedule:
                self._schedules[row["id"]] = schedule
                row[_RETAKE] = True
            if row["id"] not in seen:
                rows.append(row)
        return rows

    def _other_rows(self) -> list[dict[str, Any]]:
        """The enabled rows of other tasks, with the values of their schedules."""
        others = self.Model.objects.filter(enabled=True).exclude(task=RUN_TASK_NAME)
        return list(others.values(*_ROW_FIELDS, *_OTHER_SCHEDULE_FIELDS))

    def _apply(self, rows: list[dict[str, Any]]) -> None:
        """Take in changed rows (in the scheduler's thread)."""
        now = time.time()
        for row in rows:
            pk = row["id"]
            generic = self._generic.get(pk)
            held = self._slots.changed(pk) if generic is None else generic.model.date_changed
            if held == row["date_changed"] and not (generic is not None and row.get(_RETAKE)):
                continue  # seen already (the look-back reads it again)
            if held is None and not row["enabled"]:
                continue
            self._take(row, now, push=heapq.heappush)

    def close(self) -> None:
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        super().close()

    # --- firing our tasks ----------------------------------------------------------

    def _fire(self, due: list[Slot], at: float) -> None:
        """Record the due slots' occurrences (up to ``lead`` seconds before ``at``, the
        latest of their times), then send their runs, not before ``at``."""
        if not connection.in_atomic_block:  # (a test's transaction keeps its connection)
            close_old_connections()  # a connection the database dropped is renewed
        due = self._recheck(due)
        if not due:
            return
        moment = datetime.fromtimestamp(max(time.time(), at), UTC)
        fired: list[tuple[Slot, occurrences.Fire]] = []
        latest_of: dict[cronlib.Cron, datetime | None] = {}
        for slot in due:
            occurrence = (
                slot.clocked
                if slot.cron is None
                else window_occurrence(slot.cron, moment, slot.start, slot.end, latest_of)
            )
            if occurrence is not None:
                fired.append((slot, occurrences.Fire(slot.task_id, occurrence, slot.since())))
        try:
            published = occurrences.occurrences_fire([fire for _, fire in fired], now=moment)
        except DatabaseError:
            logger.exception("could not record %d occurrences; the workers will", len(fired))
            published = None
        except Exception:  # noqa: BLE001 - one broken task must not hold up the batch
            logger.exception("beat: firing %d schedules failed; firing them one by one", len(fired))
            fired, published, broken = self._fire_one_by_one(fired, moment)
            due = [slot for slot in due if slot.pk not in broken]  # (they are re-queued)
        messages = [
            (slot, kwargs, options)
            for index, (slot, fire) in enumerate(fired)
            for kwargs, options in _messages(
                slot.task_id, fire.occurrence, None if published is None else published[index], {}
            )
        ]
        producer = self.producer
        if _batches(producer):
            self._send_batched(messages, producer, moment.timestamp())
        else:
            self._wait_until(moment.timestamp())
            for slot, kwargs, options in messages:
                self._send(slot, kwargs, options, producer)
        self._bookkeep(due, moment)

    def _wait_until(self, at: float) -> None:
        """Decided ahead, published on time."""
        early = min(at - time.time(), self.lead)
        if early > 0:
            time.sleep(early)
            self.waited += early

    def _send_batched(
        self, messages: list[tuple[Slot, dict[str, Any], dict[str, Any]]], producer: Any, at: float
    ) -> None:
        """Build the fire's messages ahead of ``at`` and put them on the broker together at
        ``at`` (kombu's publish batch; on Redis one pipeline, one round trip). Sent one by
        one, each send took a round trip while the worker, woken by the first, took the
        CPU the next ones needed. Messages the batch could not hand over, or may not have
        (kombu: "delivery is uncertain"), are sent again one by one with Celery's retries:
        a run sent twice is still claimed once."""
        failed: list[tuple[Slot, dict[str, Any], dict[str, Any]]] = []
        try:
            with producer.batch(max_size=sys.maxsize) as batch:  # (flushed here, not by size)
                try:
                    for index, message in enumerate(messages, start=1):
                        if not self._send(*message, producer, log=False):
                            failed.append(message)
                        if index % LATE_FLUSH_EVERY == 0 and time.time() >= at:
                            batch.flush()  # a large fire already late: out as it is built
                    self._wait_until(at)
                except (KeyboardInterrupt, SystemExit):
                    # Beat is stopping (SIGTERM): what is built goes out now, a little
                    # early, rather than wait for the recovery job.
                    with contextlib.suppress(Exception):
                        batch.flush()
                    raise
        except Exception:  # noqa: BLE001 - a flush: sent again below
            logger.warning(
                "beat: %d runs may not have reached the broker; sending them one by one",
                len(messages),
                exc_info=True,
            )
            failed = messages
        for message in failed:
            self._send(*message, producer)

    def _fire_one_by_one(
        self, fired: list[tuple[Slot, occurrences.Fire]], moment: datetime
    ) -> tuple[list[tuple[Slot, occurrences.Fire]], list[list[occurrences.Publication]], set[int]]:
        """After a failed batch: each fire on its own; a slot whose fire fails again is
        tried again in a minute (its occurrence is then caught up by the misfire rules)."""
        kept: list[tuple[Slot, occurrences.Fire]] = []
        published: list[list[occurrences.Publication]] = []
        broken: set[int] = set()
        retry = time.time() + 60
        for slot, fire in fired:
            try:
                published += occurrences.occurrences_fire([fire], now=moment)
            except Exception:  # noqa: BLE001 - logged; the others go on
                logger.exception("beat: firing %s failed; trying again in a minute", slot.name)
                broken.add(slot.pk)
                self._slots.queue(slot.pk, retry)
                heapq.heappush(self._heap, (retry, slot.pk))
                continue
            kept.append((slot, fire))
        return kept, published, broken

    def _recheck(self, due: list[Slot]) -> list[Slot]:
        """The due rows as the database has them now: a deleted row is dropped, an edited
        one (not polled yet) re-taken and fired only if still due."""
        try:
            current = dict(
                self.Model.objects.filter(pk__in=[slot.pk for slot in due]).values_list(
                    "pk", "date_changed"
                )
            )
        except (DatabaseError, InterfaceError):
            return due  # the fire itself will meet the database's state
        kept, stale = [], []
        for slot in due:
            if slot.pk not in current:
                self._slots.pop(slot.pk)
            elif current[slot.pk] != slot.changed:
                stale.append(slot.pk)
            else:
                kept.append(slot)
        if stale:
            now = time.time()
            for row in self.Model.objects.filter(pk__in=stale).values(*_ROW_FIELDS):
                self._take(row, now, push=heapq.heappush)
        return kept

    def _send(
        self,
        slot: Slot,
        kwargs: dict[str, Any],
        options: dict[str, Any],
        producer: Any,
        *,
        log: bool = True,
    ) -> bool:
        """Send one run message; False when it could not be (logged unless ``log`` is
        false: the ledger has the run, and the recovery job sends it again)."""
        # (Celery would compute a safe repr of the arguments for every message.)
        options = {**options, "argsrepr": "()", "kwargsrepr": repr(kwargs)}
        message = Message(slot.name, RUN_TASK_NAME, (), kwargs, options)
        try:
            celery_beat.Scheduler.apply_async(self, message, producer, advance=False)
        except Exception:
            if log:
                logger.exception("beat: could not send %s", slot.name)
            return False
        return True

    def _bookkeep(self, fired: list[Slot], moment: datetime) -> None:
        """Beat's run bookkeeping for the batch (``last_run_at``, ``total_run_count``, a
        one-off row disabled as django-celery-beat does), written in one statement per
        500 rows and only to rows not edited since they were read (the edit wins)."""
        stamp = moment.timestamp()
        ops = connection.ops
        table = ops.quote_name(self.Model._meta.db_table)
        try:
            with connection.cursor() as cursor:
                for start in range(0, len(fired), 400):  # (SQLite: 999 parameters)
                    chunk = fired[start : start + 400]
                    params: list[Any] = [ops.adapt_datetimefield_value(moment)]
                    for slot in chunk:
                        params += [slot.pk, ops.adapt_datetimefield_value(slot.changed)]
                    cursor.execute(
                        f"UPDATE {table} SET last_run_at = %s, "  # noqa: S608 - no input
                        "total_run_count = total_run_count + 1, "
                        "enabled = (enabled AND NOT one_off) "
                        "WHERE (id, date_changed) IN "
                        f"(VALUES {', '.join(['(%s, %s)'] * len(chunk))})",
                        params,
                    )
        except (DatabaseError, InterfaceError):
            logger.exception("beat: could not write the run bookkeeping")
        now = max(time.time(), stamp)
        shared: Shared = {}
        for slot in fired:
            slot.last_run = stamp
            self._slots.ran(slot.pk, stamp)
            if slot.one_off:
                self._slots.pop(slot.pk)
                continue
            due = self._due(slot, now, shared)
            if due is not None:
                self._slots.queue(slot.pk, due)
                heapq.heappush(self._heap, (due, slot.pk))

    # --- entries celery evaluates (and our rows handed in as entries) ----------------

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
        task_id = entry.kwargs.get("task_id")
        runs: list[occurrences.Publication] | None
        try:
            runs = occurrences.occurrence_fire(
                task_id=task_id,
                occurrence=occurrence,
                since=since if isinstance(since, datetime) else None,
            )
        except DatabaseError:
            logger.exception("could not record %s at %s; the worker will", entry.name, occurrence)
            runs = None
        result = None
        for run_kwargs, options in _messages(task_id, occurrence, runs, entry.options):
            message = Message(entry.name, entry.task, entry.args, run_kwargs, options)
            result = super().apply_async(message, producer, advance=False, **kwargs)
        return result


def _batches(producer: Any) -> bool:
    """Whether the producer's transport publishes in batches (kombu 5.7: Redis does)."""
    try:
        return bool(producer.supports_batch_publish)
    except Exception:  # noqa: BLE001 - a broker away: the plain sends retry and log
        return False


def _keep_runs(entry: Entry, previous: Entry) -> None:
    """An entry read again keeps the runs its previous copy made that were not written back
    yet: never run again, never counted less."""
    if previous.last_run_at and (
        entry.last_run_at is None or previous.last_run_at > entry.last_run_at
    ):
        entry.last_run_at = entry.model.last_run_at = previous.last_run_at
    count = max(entry.total_run_count or 0, previous.total_run_count or 0)
    entry.total_run_count = entry.model.total_run_count = count


def _schedule_of(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row.get(field) for field in _SCHEDULE_FIELDS)


def _our_task_id(row: dict[str, Any]) -> str | None:
    """The task id of one of our tasks' plain rows (no custom routing), else None."""
    if row["task"] != RUN_TASK_NAME or row["interval_id"] or row["solar_id"]:
        return None
    if row["queue"] or row["exchange"] or row["routing_key"] or row["priority"] is not None:
        return None
    if (row["headers"] or "{}").strip() not in {"{}", ""}:
        return None
    try:
        kwargs = json.loads(row["kwargs"] or "{}")
    except ValueError:
        return None
    task_id = kwargs.get("task_id") if isinstance(kwargs, dict) else None
    if not isinstance(task_id, str) or set(kwargs) != {"task_id"}:
        return None
    try:
        uuid.UUID(task_id)
    except ValueError:
        return None
    return task_id


def _release_freed_memory() -> None:
    """Hand memory freed after a large load back to the system (glibc keeps it)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to do


def _freeze_loaded() -> None:
    """Once beat has loaded: collect the garbage and move what is left out of the cyclic
    collector's sight (``gc.freeze``). A full collection walks every object the process
    holds, 80 ms at 100,000 schedules on a 2-core machine, and would come whenever enough
    new objects had piled up: a tick held that long. What beat loaded lives until it
    stops; reference counting still frees whatever is dropped later."""
    gc.collect()
    _release_freed_memory()
    gc.freeze()


def _messages(
    task_id: Any,
    occurrence: datetime,
    runs: list[occurrences.Publication] | None,
    options: dict[str, Any],
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(kwargs, options) of the run_task messages for one fire: its recorded runs (a
    jittered one with its countdown), or, when the database could not record it (None),
    one message naming the occurrence, which the worker records with the same service."""
    options = {"ignore_result": runs_ignore_result(), **options}
    if runs is None:
        return [({"task_id": task_id, "scheduled_for": occurrence.isoformat()}, options)]
    return [
        (run.kwargs, {**options, "countdown": run.countdown} if run.countdown else options)
        for run in runs
    ]
