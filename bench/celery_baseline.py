"""Bare Celery on the same broker: the yardstick of issue 9.

A no-op task in a Celery app of its own (no Django, no result backend, no events),
with the worker settings that matter for throughput set as ours are: late acks, requeue
on worker loss, prefetch 1, the same concurrency and pool (prefork). Each run of the
task appends one line (sent, start, end as epoch seconds) to a file of its process; that
is all it does.

    celery -A bench.celery_baseline worker --concurrency=2   (BENCH_BROKER_URL, BENCH_STAMPS)

``bench.throughput`` publishes with :func:`publish`, starts the worker and reads the
stamps with :func:`stamps`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

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


@app.task(name="bench.noop")
def noop(sent: float) -> None:
    global _out
    start = time.time()
    if _out is None:
        directory = os.environ.get("BENCH_STAMPS", "/tmp")
        _out = os.open(
            f"{directory}/stamps-{os.getpid()}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
    os.write(_out, f"{sent} {start} {time.time()}\n".encode())


def publish(n: int, *, pause: float = 0.0) -> float:
    """Send ``n`` no-op messages from this process; returns the seconds it took."""
    began = time.monotonic()
    for _ in range(n):
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
