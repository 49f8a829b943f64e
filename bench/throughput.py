"""End-to-end throughput of the foundation: N "run now" executions of a webhook task
(to a loopback HTTP server) through a real worker, with full execution records.

    .venv/bin/python -m bench.throughput --mode embedded -n 300
    .venv/bin/python -m bench.throughput --mode postgres-redis -n 1000

Prints executions/s, and queue-to-start latency percentiles from the records.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

from tests.http_receiver import Receiver
from tests.integration.stack import Stack, procfile_commands, wait_until

PUBLISH = """
from django.contrib.auth import get_user_model
from tasks_app.services.definitions import task_create
from tasks_app.services.dispatch import task_run_now
owner, _ = get_user_model().objects.get_or_create(username="bench")
task = task_create(owner=owner, name="bench", type="trigger",
                   trigger={{"type": "event", "config": {{"event": "bench"}}}},
                   action={{"type": "webhook", "url": "{url}/bench"}})
for _ in range({n}):
    task_run_now(task=task)
result = str(task.id)
"""


def _ts(value: object) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["embedded", "postgres-redis"], default="embedded")
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Receiver() as http:
        stack = Stack(args.mode, Path(tmp))
        stack.env["WORKER_CONCURRENCY"] = str(args.concurrency)
        try:
            stack.manage("migrate", "--noinput")
            stack.start("worker", procfile_commands()["worker"])
            time.sleep(5)
            started = time.monotonic()
            task_id = stack.orm(PUBLISH.format(url=http.url, n=args.n))
            published = time.monotonic()
            sql = "SELECT COUNT(*) FROM task_executions WHERE task_id = ? AND status = 'completed'"
            wait_until(
                lambda: stack.query(sql, (stack.id_param(task_id),))[0][0] >= args.n,
                timeout=args.n * 2,
                interval=0.2,
            )
            done = time.monotonic()
            rows = stack.query(
                "SELECT queued_at, started_at, completed_at FROM task_executions WHERE task_id = ?",
                (stack.id_param(task_id),),
            )
        finally:
            stack.stop()
    waits = sorted((_ts(s) - _ts(q)).total_seconds() * 1000 for q, s, _ in rows)
    runs = sorted((_ts(c) - _ts(s)).total_seconds() * 1000 for _, s, c in rows)
    q = statistics.quantiles
    print(f"mode={args.mode} n={args.n} worker concurrency={args.concurrency}")
    print(f"publish (incl. Django start-up of the shell): {published - started:.2f} s")
    print(
        f"all completed after {done - started:.2f} s: {args.n / (done - started):.1f} executions/s"
    )
    last_start = max(_ts(s) for _, s, _ in rows)
    first_start = min(_ts(s) for _, s, _ in rows)
    span = (last_start - first_start).total_seconds()
    print(f"worker start rate (first to last start): {args.n / span:.1f} executions/s")
    print(
        f"claim->recorded per execution ms: p50 {q(runs, n=100)[49]:.1f}  "
        f"p99 {q(runs, n=100)[98]:.1f}"
    )
    print(
        f"queued->started ms (includes the backlog): p50 {q(waits, n=100)[49]:.0f}  "
        f"max {waits[-1]:.0f}"
    )
    print(f"receiver saw {len(http.received('/bench'))} requests")


if __name__ == "__main__":
    main()
