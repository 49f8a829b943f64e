"""Our tasks' beat rows as the scheduler keeps them (tasks_app.beat): column-wise in
typed arrays, about 50 bytes a row instead of a few hundred as objects, so 100,000
schedules fit in a small beat process. :class:`Slot` is one row read out of the table."""

from __future__ import annotations

import math
import uuid
from array import array
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from . import cron as cronlib
from .conf import BEAT_ENTRY_PREFIX

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_MASK = (1 << 64) - 1


def micros(moment: datetime) -> int:
    """An aware time as whole microseconds since the epoch (exact, unlike a float)."""
    return (moment - EPOCH) // _US


def from_micros(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


class Slot:
    """One task's beat row: its schedule (a cron in a timezone, or a one-off time and the
    task's window), its previous fire and its ``date_changed`` (what the bookkeeping
    write checks)."""

    __slots__ = (
        "pk",
        "task_id",
        "cron",
        "clocked",
        "start",
        "end",
        "last_run",
        "changed",
        "one_off",
    )

    def __init__(
        self,
        pk: int,
        task_id: str,
        cron: cronlib.Cron | None,
        *,
        clocked: datetime | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        last_run: float | None = None,
        changed: datetime,
        one_off: bool = False,
    ) -> None:
        self.pk, self.task_id, self.cron = pk, task_id, cron
        self.clocked, self.start, self.end = clocked, start, end
        self.last_run = last_run  # epoch seconds of the previous fire
        self.changed, self.one_off = changed, one_off

    @property
    def name(self) -> str:
        return f"{BEAT_ENTRY_PREFIX}{self.task_id}"

    def since(self) -> datetime | None:
        return datetime.fromtimestamp(self.last_run, UTC) if self.last_run is not None else None


class SlotTable:
    """Slots by their row's primary key, stored column-wise; freed rows are reused."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._index: dict[int, int] = {}
        self._free: list[int] = []
        self._pk = array("q")
        self._hi, self._lo = array("Q"), array("Q")
        self._cron = array("l")  # index into _crons, -1 for a one-off
        self._last = array("d")  # NaN: never ran
        self._changed = array("q")
        self._due = array("d")  # when its heap item is due; NaN: none queued
        self._one_off = bytearray()
        self._rare: dict[int, tuple[datetime | None, datetime | None, datetime | None]] = {}
        self._crons: list[cronlib.Cron] = []
        self._cron_ids: dict[cronlib.Cron, int] = {}

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, pk: object) -> bool:
        return pk in self._index

    def __iter__(self) -> Iterator[int]:
        return iter(self._index)

    def put(self, slot: Slot) -> int:
        """Keep ``slot``, replacing the row's previous one (whose heap items are stale
        from now on: nothing is queued for the new one until :meth:`queue`)."""
        at = self._index.get(slot.pk)
        if at is None and self._free:
            at = self._index[slot.pk] = self._free.pop()
        elif at is None:
            at = self._index[slot.pk] = len(self._pk)
            for column in (self._pk, self._hi, self._lo, self._cron, self._changed):
                column.append(0)
            self._last.append(math.nan)
            self._due.append(math.nan)
            self._one_off.append(0)
        task = uuid.UUID(slot.task_id).int
        self._pk[at] = slot.pk
        self._hi[at], self._lo[at] = task >> 64, task & _MASK
        self._cron[at] = -1 if slot.cron is None else self._cron_id(slot.cron)
        self._last[at] = math.nan if slot.last_run is None else slot.last_run
        self._changed[at] = micros(slot.changed)
        self._due[at] = math.nan
        self._one_off[at] = slot.one_off
        if slot.clocked or slot.start or slot.end:
            self._rare[at] = (slot.clocked, slot.start, slot.end)
        else:
            self._rare.pop(at, None)
        return at

    def get(self, pk: int) -> Slot | None:
        at = self._index.get(pk)
        if at is None:
            return None
        last = self._last[at]
        clocked, start, end = self._rare.get(at, (None, None, None))
        cron = self._cron[at]
        return Slot(
            pk,
            str(uuid.UUID(int=self._hi[at] << 64 | self._lo[at])),
            None if cron < 0 else self._crons[cron],
            clocked=clocked,
            start=start,
            end=end,
            last_run=None if math.isnan(last) else last,
            changed=from_micros(self._changed[at]),
            one_off=bool(self._one_off[at]),
        )

    def __getitem__(self, pk: int) -> Slot:
        slot = self.get(pk)
        if slot is None:
            raise KeyError(pk)
        return slot

    def queue(self, pk: int, due: float | None) -> None:
        """Remember when the row's one live heap item is due (None: nothing queued)."""
        at = self._index.get(pk)
        if at is not None:
            self._due[at] = math.nan if due is None else due

    def due(self, pk: int) -> float | None:
        """When the row's live heap item is due (None: nothing queued)."""
        at = self._index.get(pk)
        if at is None or math.isnan(self._due[at]):
            return None
        return self._due[at]

    def current(self, pk: int, due: float) -> bool:
        """Whether a heap item ``(due, pk)`` is the row's live one (not stale: the row
        was not replaced, removed or fired since it was queued)."""
        at = self._index.get(pk)
        return at is not None and self._due[at] == due

    def changed(self, pk: int) -> datetime | None:
        at = self._index.get(pk)
        return None if at is None else from_micros(self._changed[at])

    def ran(self, pk: int, stamp: float) -> None:
        at = self._index.get(pk)
        if at is not None:
            self._last[at] = stamp

    def pop(self, pk: int) -> bool:
        at = self._index.pop(pk, None)
        if at is None:
            return False
        self._rare.pop(at, None)
        self._free.append(at)
        return True

    def _cron_id(self, cron: cronlib.Cron) -> int:
        found = self._cron_ids.get(cron)
        if found is None:
            found = self._cron_ids[cron] = len(self._crons)
            self._crons.append(cron)
        return found
