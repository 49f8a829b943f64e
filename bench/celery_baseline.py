"""Bare Celery on the same broker: the yardstick of issue 9.

A no-op task in a Celery app of its own (no Django, no result backend, no events),
with the worker settings that matter for throughput set as ours are: late acks, requeue
on worker loss, prefetch 1, the same concurrency and pool (prefork). Each run of the
task appends one line (sent, start, end as epoch seconds) to a file of its process; that
is all it does. Its twin ``bench.floor`` also writes the least record of a run that
exactly-once needs (two single-row UPDATEs in PostgreSQL): the ceiling of any design
that records each run before and after its action.

    celery -A bench.celery_baseline worker --concurrency=2   (BENCH_BROKER_URL, BENCH_STAMPS)

``bench.throughput`` publishes with :func:`publish`, starts the worker and reads the
stamps with :func:`stamps`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from celery import Celery

app = Celery("bench_baseline", broker=os.environ.get("BENCH_BROKER_URL", "memory://"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    task_default_queue="bench-bare",
)

_out: int | None = None
_db: Any = None


def _stamp(sent: float, start: float) -> None:
    global _out
    if _out is None:
        directory = os.environ.get("BENCH_STAMPS", "/tmp")
        _out = os.open(
            f"{directory}/stamps-{os.getpid()}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
    os.write(_out, f"{sent} {start} {time.time()}\n".encode())


@app.task(name="bench.noop")
def noop(sent: float) -> None:
    _stamp(sent, time.time())


@app.task(name="bench.floor")
def floor(sent: float, row: int) -> None:
    """The least an exactly-once record of a run can cost: the run's row is marked taken,
    then done, in two single-statement transactions (raw SQL on a kept connection, no ORM,
    no reads). Our worker does this and more (the task's definition, its counters,
    logs, events) through Django's ORM."""
    global _db
    start = time.time()
    if _db is None:
        import psycopg

        _db = psycopg.connect(os.environ["BENCH_DATABASE_URL"], autocommit=True)
    _db.execute("UPDATE bench_floor SET started_at = now() WHERE id = %s", (row,))
    _db.execute("UPDATE bench_floor SET done_at = now() WHERE id = %s", (row,))
    _stamp(sent, start)


def floor_table(database_url: str, n: int) -> None:
    """The rows the floor task updates, one per message."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as db:
        db.execute("DROP TABLE IF EXISTS bench_floor")
        db.execute(
            "CREATE TABLE bench_floor (id int PRIMARY KEY, started_at timestamptz, "
            "done_at timestamptz)"
        )
        db.execute("INSERT INTO bench_floor (id) SELECT generate_series(0, %s)", (n,))


def publish(n: int, *, pause: float = 0.0, kind: str = "noop") -> float:
    """Send ``n`` messages of the no-op (or floor) task from this process; returns the
    seconds it took."""
    began = time.monotonic()
    for row in range(n):
        if kind == "floor":
            floor.delay(time.time(), row)
        else:
            noop.delay(time.time())
        if pause:
            time.sleep(pause)
    return time.monotonic() - began


def stamps(directory: Path) -> list[tuple[float, float, float]]:
    rows = []
    for path in directory.glob("stamps-*"):
        for line in path.read_text().splitlines():
            sent, start, end = (float(x) for x in line.split())
            rows.append((sent, start, end))
    return sorted(rows, key=lambda row: row[1])
