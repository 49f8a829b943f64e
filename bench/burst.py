"""Burst: N active recurring tasks all due on the same minute, stock ``DatabaseScheduler``
beside the project's ``tasks_app.beat.Scheduler`` (issue 9: 10,000 sent within 10 s,
100,000 within 100 s).

    .venv/bin/python -m bench.burst                       # N = 1000 (with a worker)
    .venv/bin/python -m bench.burst --n 1000 10000 100000

One scratch PostgreSQL database (``bench.data``), tasks added on top for each N: all
"M H * * *" in UTC on one CrontabSchedule row, webhook to a loopback HTTP server. For each
N and each scheduler: the executions are deleted, the minute moved to a minute boundary at
least ``--margin`` seconds after the scheduler is expected to have loaded (the cron of
every task and its row, ``last_run_at`` 10 minutes before it), and the scheduler runs in
a fresh subprocess on real Redis (``--redis-db``, default 13; a private queue) ticking
as ``celery beat`` does (``bench.beatrun``) until all N run messages are sent, or for at most
``--stock-timeout`` s after the minute for the stock one (``--timeout`` for ours); then
sends/s and the time to send all N (extrapolated for a capped run) are reported, with the
longest tick and beat's memory. The Redis queue length is checked against the sends; for
ours also the ledger rows (TaskExecution) written by beat.

For the N given to ``--started`` (default 1000) a real worker (``celery worker -Q <queue>
-c 2``) consumes during the run, and the time until every execution has started
(``TaskExecution.started_at``) is measured too; for the stock scheduler the worker records
the occurrences itself (``tasks.run_task`` fallback, see ``bench.beatrun``).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import beatrun
from bench.data import add_recurring, bench_user, scratch_database
from tests.http_receiver import Receiver
from tests.services import REDIS_URL

KINDS = ("stock", "project")


def _cron_at(moment: datetime) -> str:
    return f"{moment.minute} {moment.hour} * * *"


def arm(due: datetime) -> None:
    """Every task due at ``due`` (and at no other time soon), nothing recorded yet."""
    from django.db import connection

    cron = _cron_at(due)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE task_executions CASCADE")
        cursor.execute("TRUNCATE django_celery_results_taskresult")
        cursor.execute(
            "UPDATE django_celery_beat_crontabschedule SET minute = %s, hour = %s "
            "WHERE id IN (SELECT DISTINCT crontab_id FROM django_celery_beat_periodictask)",
            [str(due.minute), str(due.hour)],
        )
        cursor.execute(
            "UPDATE scheduled_tasks SET cron = %s, next_run = %s, updated_at = now()",
            [cron, due],
        )
        cursor.execute(
            "UPDATE django_celery_beat_periodictask SET last_run_at = %s, "
            "total_run_count = 0, date_changed = now() WHERE crontab_id IS NOT NULL",
            [due - timedelta(minutes=10)],
        )


def ledger(due: datetime) -> dict[str, Any]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), count(started_at), "
            "extract(epoch FROM max(started_at) - %s), "
            "extract(epoch FROM percentile_cont(0.5) WITHIN GROUP "
            "(ORDER BY started_at - %s)) "
            "FROM task_executions WHERE scheduled_for = %s",
            [due, due, due],
        )
        rows, started, last, p50 = cursor.fetchone()
    return {
        "rows": rows,
        "started": started,
        "all_started_s": float(last) if last is not None else None,
        "started_p50_s": float(p50) if p50 is not None else None,
    }


def run_one(
    kind: str,
    n: int,
    args: argparse.Namespace,
    database_url: str,
    tmp: Path,
    estimate: dict[str, tuple[int, float]],
) -> dict[str, Any]:
    from django.db import connections

    with_worker = n in args.started
    queue = beatrun.new_queue("bench-burst")
    broker = f"{REDIS_URL}/{args.redis_db}"
    env = beatrun.child_env(database_url, broker, queue)
    timeout = args.stock_timeout if kind == "stock" else args.timeout
    worker = beat = None
    try:
        beatrun.redis_forget(broker, queue)
        if with_worker:
            worker = beatrun.Worker(env, tmp / f"worker-{kind}-{n}.log", args.concurrency)
            worker.wait_ready()
        for _attempt in range(3):
            seen_n, seen_s = estimate.get(kind, (1000, 3.0 if kind == "stock" else 2.0))
            load = seen_s * max(n / seen_n, 1.0) * 1.3 + 2
            earliest = datetime.now(UTC) + timedelta(seconds=load + args.margin + 3)
            due = earliest.replace(second=0, microsecond=0) + timedelta(minutes=1)
            arm(due)
            connections.close_all()
            due_s = due.timestamp()
            beat = beatrun.Beat(
                kind, env, tmp / f"beat-{kind}-{n}.log", expect=n, until=due_s + timeout
            )
            ready = beat.wait_ready(timeout=max(due_s - time.time() + 600, 600))
            estimate[kind] = (n, ready["load_s"])
            if ready["loaded_at"] <= due_s - 5:
                break
            print(
                f"  {kind}: loaded {ready['loaded_at'] - due_s:+.1f} s after the minute; "
                "again with a later minute",
                flush=True,
            )
            beat.stop()
            beat = None
        else:
            raise RuntimeError(f"{kind} never loaded in time")
        print(
            f"  {kind}: loaded in {ready['load_s']:.1f} s, due {due:%H:%M:%S} UTC "
            f"({due_s - ready['loaded_at']:.0f} s later)",
            flush=True,
        )
        result = beat.wait(timeout=due_s - time.time() + timeout + 600)
        beat = None
        sends = sorted(result.pop("sends"))
        queued = beatrun.redis_client(broker).llen(queue)
        out: dict[str, Any] = {
            "kind": kind,
            "n": n,
            "due": due.isoformat(),
            "worker": with_worker,
            "sent": len(sends),
            "queue_len": queued,
            "first_sent_s": sends[0] - due_s if sends else None,
            "last_sent_s": sends[-1] - due_s if sends else None,
            "capped": len(sends) < n,
            "cap_s": timeout,
            "load_s": result["load_s"],
            "rss_load_mib": result["rss_load_mib"],
            "rss_end_mib": result["rss_end_mib"],
            "hwm_mib": result["hwm_mib"],
            "cpu_pct": beatrun.cpu_between(
                result["ticks"], due_s - 0.05, sends[-1] if sends else due_s + timeout
            ),
            **beatrun.tick_stats(result["ticks"], since=due_s - 0.05),
        }
        span = (sends[-1] - due_s) if sends else 0.0
        if len(sends) < n:
            span = result["loaded_at"] + result["loop_s"] - due_s  # the whole capped run
        out["sends_per_s"] = len(sends) / span if span > 0 else None
        out["all_sent_s"] = (
            out["last_sent_s"]
            if not out["capped"]
            else (n / out["sends_per_s"] if out["sends_per_s"] else math.inf)
        )
        if with_worker:
            out.update(wait_started(due, len(sends), args.started_timeout))
        else:
            out.update({f"ledger_{k}": v for k, v in ledger(due).items()})
        return out
    finally:
        if beat is not None:
            beat.stop()
        if worker is not None:
            worker.stop()
        beatrun.redis_forget(broker, queue)


def wait_started(due: datetime, expected: int, timeout: float) -> dict[str, Any]:
    """Wait until ``expected`` executions of the minute have started (or no progress)."""
    from django.db import connections

    deadline = time.monotonic() + timeout
    seen, progress = -1, time.monotonic()
    while True:
        state = ledger(due)
        if state["started"] >= expected or time.monotonic() > deadline:
            break
        if state["started"] != seen:
            seen, progress = state["started"], time.monotonic()
        elif time.monotonic() - progress > 60:
            break
        time.sleep(0.5)
    connections.close_all()
    return {f"ledger_{k}": v for k, v in state.items()}


def _s(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "never"
    return f"{value:.{digits}f} s"


def _cell(r: dict[str, Any], key: str) -> str:
    if "error" in r:
        return "failed"
    n = r["n"]
    if key == "sent":
        text = f"{r['sent']} of {n} (queue {r['queue_len']})"
        return text + (f", capped at {r['cap_s']:.0f} s" if r["capped"] else "")
    if key == "all_sent":
        if r["capped"]:
            return f"≈{r['all_sent_s']:.0f} s extrapolated ({r['all_sent_s'] / 3600:.1f} h)"
        return _s(r["all_sent_s"], 2)
    if key == "first":
        return _s(r["first_sent_s"], 3)
    if key == "rate":
        return f"{r['sends_per_s']:.1f}/s" if r["sends_per_s"] else "—"
    if key == "ledger":
        return f"{r['ledger_rows']} rows"
    if key == "started":
        if not r["worker"]:
            return "not measured"
        done = f"{r['ledger_started']} of {n}"
        if r["ledger_started"] >= n:
            return f"{_s(r['ledger_all_started_s'], 1)} (p50 {_s(r['ledger_started_p50_s'], 1)})"
        return f"{done} started; last {_s(r['ledger_all_started_s'])}"
    if key == "tick":
        return f"{r.get('tick_max_ms', 0):.0f} ms ({r.get('ticks', 0)} ticks)"
    if key == "rss":
        return f"{r['rss_load_mib']:.0f} MiB loaded, peak {r['hwm_mib']:.0f} MiB"
    if key == "load":
        return _s(r["load_s"], 1)
    if key == "cpu":
        return f"{r['cpu_pct']:.0f} %" if r["cpu_pct"] is not None else "—"
    raise KeyError(key)


ROWS = [
    ("start-up (construct + load)", "load"),
    ("first message sent after the minute", "first"),
    ("run messages sent", "sent"),
    ("all N sent after the minute", "all_sent"),
    ("sends/s (minute → last send)", "rate"),
    ("execution rows of the minute (without a worker: beat's ledger rows)", "ledger"),
    ("all N started after the minute (worker -c 2)", "started"),
    ("longest tick (from the minute)", "tick"),
    ("beat CPU, minute → last send (% of one core)", "cpu"),
    ("beat RSS", "rss"),
]


def table(n: int, results: dict[str, dict[str, Any]]) -> str:
    head = " | ".join(beatrun.LABELS[k] for k in KINDS)
    lines = [f"| N = {n} | {head} |", "|---|---|---|"]
    for label, key in ROWS:
        lines.append(f"| {label} | {' | '.join(_cell(results[k], key) for k in KINDS)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000])
    parser.add_argument("--started", type=int, nargs="*", default=[1000], metavar="N")
    parser.add_argument("--stock-timeout", type=float, default=120.0)
    parser.add_argument("--timeout", type=float, default=300.0, help="ours: cap in seconds")
    parser.add_argument("--started-timeout", type=float, default=600.0)
    parser.add_argument("--margin", type=float, default=15.0, help="s from loaded to the minute")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--redis-db", type=int, default=13)
    args = parser.parse_args()

    summary = []
    estimate: dict[str, tuple[int, float]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-burst-") as tmp_name,
        Receiver() as http,
        scratch_database("bench_burst") as database_url,
    ):
        from django.db import connection

        tmp = Path(tmp_name)
        owner = bench_user()
        action = {"type": "webhook", "url": f"{http.url}/burst"}
        have = 0
        for n in sorted(set(args.n)):
            placeholder = datetime.now(UTC) + timedelta(hours=3)
            with connection.cursor() as cursor:
                cursor.execute("SELECT cron FROM scheduled_tasks LIMIT 1")
                row = cursor.fetchone()
            cron = row[0] if row else _cron_at(placeholder)
            began = time.monotonic()
            add_recurring(n - have, lambda i, cron=cron: (cron, "UTC"), owner=owner, action=action)
            have = n
            print(f"N={n}: {time.monotonic() - began:.1f} s to add the tasks", flush=True)
            results = {}
            for kind in KINDS:
                try:
                    results[kind] = run_one(kind, n, args, database_url, tmp, estimate)
                except Exception as exc:  # noqa: BLE001 - report, go on with the next
                    print(f"  {kind} failed: {exc}", flush=True)
                    results[kind] = {"kind": kind, "n": n, "error": str(exc)}
            print(table(n, results), flush=True)
            summary.append({"n": n, **results})
    print(json.dumps({"bench": "burst", "results": summary}), flush=True)


if __name__ == "__main__":
    main()
