"""Lateness: how late due runs are sent and started with many idle schedules and a steady
trickle of edits, stock ``DatabaseScheduler`` beside the project's
``tasks_app.beat.Scheduler`` (issue 9: p99 ≤ 25 ms and no stall over 100 ms at 100,000).

    .venv/bin/python -m bench.lateness                             # 10,000 idle, 20 s
    .venv/bin/python -m bench.lateness --idle 100000 --seconds 60

One scratch PostgreSQL database (``bench.data``) with ``--idle`` active recurring tasks,
daily "m h * * *" over 8 timezones, none due within 90 minutes. For each scheduler in
turn, on real Redis (``--redis-db``, default 13; a private queue): a real worker (``celery worker -Q
<queue> -c 2``) starts, then the scheduler in a fresh subprocess ticking as ``celery
beat`` does (``bench.beatrun``); once it has loaded, ``--per-second`` one-time tasks per
whole second are added for ``--seconds`` seconds, starting ``--lead`` s later (bulk rows,
then ``PeriodicTasks.update_changed()`` as the API's save would signal), each a webhook
to a loopback HTTP server, and the bench edits ``--edits`` random idle tasks a second
through the services the API uses (8 of 10 a cron change to another quiet cron through
``task_update``, 1 ``task_pause``, 1 ``task_resume``). The scheduler runs until
``--grace`` s after the last due time; the worker until every sent run has started.

Per due run: due time → run message sent (beat side, the publish of the message) and
due time → execution started (``TaskExecution.started_at``, written by the worker's
claim), p50/p99/max, a run never sent or never started counted as infinitely late; the
scheduler's ticks (max, count over 100 ms), its CPU and memory.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bench import beatrun
from bench.data import TIMEZONES, add_one_time, add_recurring, bench_user, scratch_database
from tests.http_receiver import Receiver
from tests.services import REDIS_URL

KINDS = ("stock", "project")
QUIET = timedelta(minutes=90)  # no idle cron fires this soon


def quiet_pool(rng: random.Random, now: datetime, per_zone: int) -> dict[str, list[str]]:
    """Per timezone, ``per_zone`` daily "m h * * *" whose next fire is more than QUIET away."""
    pool: dict[str, list[str]] = {}
    for zone in TIMEZONES:
        local = now.astimezone(ZoneInfo(zone))
        crons: set[str] = set()
        while len(crons) < per_zone:
            minute, hour = rng.randrange(60), rng.randrange(24)
            fire = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
            if fire <= local:
                fire += timedelta(days=1)
            if fire - local > QUIET and fire - local < timedelta(hours=24) - QUIET:
                crons.add(f"{minute} {hour} * * *")
        pool[zone] = sorted(crons)
    return pool


def edit(
    until: float, rate: float, ids: list[Any], pool: dict[str, list[str]], rng: random.Random
) -> dict[str, Any]:
    """``rate`` edits a second of random idle tasks until ``until`` (epoch seconds)."""
    from django.db import connections

    from tasks_app.models import ScheduledTask
    from tasks_app.services.definitions import task_pause, task_resume, task_update

    paused: list[Any] = []
    took: list[float] = []
    kinds = {"cron": 0, "pause": 0, "resume": 0}
    began = next_at = time.time()
    count = 0
    while rate > 0:
        now = time.time()
        if now >= until:
            break
        if now < next_at:
            time.sleep(min(next_at, until) - now)
            continue
        next_at += 1 / rate
        started = time.perf_counter()
        if count % 10 == 3:
            task = ScheduledTask.objects.get(pk=rng.choice(ids))
            task_pause(task=task, reason="bench")
            paused.append(task.pk)
            kinds["pause"] += 1
        elif count % 10 == 8 and paused:
            task = ScheduledTask.objects.get(pk=paused.pop(0))
            task_resume(task=task)
            kinds["resume"] += 1
        else:
            task = ScheduledTask.objects.get(pk=rng.choice(ids))
            choices = [cron for cron in pool[task.timezone] if cron != task.cron]
            task_update(task=task, cron=rng.choice(choices))
            kinds["cron"] += 1
        took.append((time.perf_counter() - started) * 1000)
        count += 1
    if rate <= 0:
        time.sleep(max(until - time.time(), 0.0))  # no edits: just the runs
    connections.close_all()
    return {
        "edits": count,
        "edits_per_s": count / max(time.time() - began, 1e-9),
        "edit_p50_ms": statistics.median(took) if took else 0.0,
        **{f"edits_{k}": v for k, v in kinds.items()},
    }


def pct(values: list[float], q: float) -> float:
    """Nearest rank (values sorted; math.inf for a run that never happened)."""
    if not values:
        return math.nan
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def spread(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "p50_ms": pct(values, 0.50) * 1000,
        "p99_ms": pct(values, 0.99) * 1000,
        "max_ms": values[-1] * 1000 if values else math.nan,
        "missing": sum(1 for v in values if math.isinf(v)),
    }


def executions_of(task_ids: list[Any]) -> list[tuple[Any, Any, datetime, datetime | None, str]]:
    from tasks_app.models import TaskExecution

    return list(
        TaskExecution.objects.filter(task_id__in=task_ids).values_list(
            "id", "task_id", "scheduled_for", "started_at", "status"
        )
    )


def run_one(
    kind: str,
    args: argparse.Namespace,
    database_url: str,
    tmp: Path,
    idle_ids: list[Any],
    pool: dict[str, list[str]],
    owner: Any,
    url: str,
) -> dict[str, Any]:
    from django.db import connections
    from django_celery_beat.models import PeriodicTasks

    from tasks_app.models import ScheduledTask

    queue = beatrun.new_queue("bench-late")
    broker = f"{REDIS_URL}/{args.redis_db}"
    env = beatrun.child_env(database_url, broker, queue)
    worker = beat = None
    try:
        beatrun.redis_forget(broker, queue)
        worker = beatrun.Worker(env, tmp / f"worker-{kind}.log", args.concurrency)
        worker.wait_ready()
        connections.close_all()
        beat = beatrun.Beat(kind, env, tmp / f"beat-{kind}.log", keys=True)
        ready = beat.wait_ready(timeout=1200)
        print(f"  {kind}: loaded in {ready['load_s']:.1f} s", flush=True)
        start = math.ceil(time.time()) + args.lead
        run_ats = [
            datetime.fromtimestamp(start + second, UTC)
            for second in range(args.seconds)
            for _ in range(args.per_second)
        ]
        once = add_one_time(run_ats, owner=owner, action={"type": "webhook", "url": f"{url}/late"})
        PeriodicTasks.update_changed()  # as the PeriodicTask.save of task_create signals
        created = time.time()
        end = start + args.seconds
        beat.set_until(end + args.grace)
        if created > start:
            print(f"  {kind}: the one-time tasks were added {created - start:.1f} s late")
        edits = edit(end, args.edits, idle_ids, pool, random.Random(args.seed))
        result = beat.wait(timeout=args.grace + 900)
        beat = None
        due_of = dict(zip(once, run_ats, strict=True))
        sent = len(result["sends"])
        # Wait until every sent run has started (or nothing moves for 30 s).
        seen, progress = -1, time.monotonic()
        while True:
            rows = executions_of(once)
            started = sum(1 for row in rows if row[3] is not None)
            if started >= sent:
                break
            if started != seen:
                seen, progress = started, time.monotonic()
            elif time.monotonic() - progress > 30:
                break
            time.sleep(0.5)
        ScheduledTask.objects.filter(pk__in=once).delete()  # none left for the next run
        connections.close_all()
    finally:
        if beat is not None:
            beat.stop()
        if worker is not None:
            worker.stop()
        beatrun.redis_forget(broker, queue)

    task_of_execution = {str(row[0]): row[1] for row in rows}
    first_sent: dict[Any, float] = {}
    stray: list[tuple[float, str]] = []
    for moment, key in result["sends"]:
        task = task_of_execution.get(key) if kind == "project" else _uuid(key)
        if task not in due_of:
            stray.append((moment, key))
            continue
        first_sent.setdefault(task, moment)
    started_at: dict[Any, float] = {}
    statuses: dict[str, int] = {}
    for _, task, _scheduled, started, status in rows:
        statuses[status] = statuses.get(status, 0) + 1
        if started is not None:
            started_at[task] = min(started_at.get(task, math.inf), started.timestamp())
    sent_late = [first_sent.get(t, math.inf) - due.timestamp() for t, due in due_of.items()]
    start_late = [started_at.get(t, math.inf) - due.timestamp() for t, due in due_of.items()]
    # The runs due in one second, in the order they started: where the wait piles up.
    by_second: dict[datetime, list[float]] = {}
    for task, due in due_of.items():
        by_second.setdefault(due, []).append(started_at.get(task, math.inf) - due.timestamp())
    ranks: list[list[float]] = []
    for lates in by_second.values():
        for rank, late in enumerate(sorted(lates)):
            if rank == len(ranks):
                ranks.append([])
            ranks[rank].append(late)
    if result.get("phases"):
        slow = sorted(result["phases"], key=lambda p: -p[2])[:25]
        print("slowest phases:", [(round(p[0] - start, 3), p[1], p[2]) for p in slow], flush=True)
    ticks = beatrun.tick_stats(result["ticks"])
    ticks["slowest_ticks"] = [
        {"at_s": round(t - start, 3), "ms": round(d * 1000, 1)}
        for t, d, _ in sorted(result["ticks"], key=lambda tick: -tick[1])[:5]
    ]
    return {
        "kind": kind,
        "due": len(due_of),
        "load_s": result["load_s"],
        "sends": sent,
        "stray_sends": len(stray),
        "stray_examples": strays_explained(kind, stray[:5]),
        "sent": {**spread(sent_late), "count": len(first_sent)},
        "started": {**spread(start_late), "count": len(started_at)},
        "started_by_rank": [spread(lates) for lates in ranks],
        "statuses": statuses,
        **ticks,
        **beatrun.gc_stats(result.get("gc_pauses", [])),
        "cpu_pct": result["cpu_pct"],
        "loop_s": result["loop_s"],
        "rss_load_mib": result["rss_load_mib"],
        "hwm_mib": result["hwm_mib"],
        **edits,
    }


def strays_explained(kind: str, stray: list[tuple[float, str]]) -> list[dict[str, Any]]:
    """What the run messages sent for idle tasks were (their execution or task)."""
    from tasks_app.models import ScheduledTask, TaskExecution

    out = []
    for moment, key in stray:
        if kind == "project":
            execution = TaskExecution.objects.filter(pk=key).select_related("task").first()
            task = execution.task if execution else None
            seen = {
                "scheduled_for": execution and execution.scheduled_for,
                "status": execution and execution.status,
                "error": execution and execution.error,
                "logs": execution and execution.logs,
            }
        else:
            task = ScheduledTask.objects.filter(pk=_uuid(key)).first()
            seen = {}
        out.append(
            {
                "sent": datetime.fromtimestamp(moment, UTC),
                "task": key if task is None else str(task.pk),
                "cron": task and f"{task.cron} {task.timezone}",
                "task_status": task and task.status,
                "updated_at": task and task.updated_at,
                **seen,
            }
        )
    return out


def _uuid(value: Any) -> Any:
    import uuid

    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def _ms(value: float) -> str:
    if math.isinf(value):
        return "never"
    if math.isnan(value):
        return "—"
    return f"{value / 1000:.2f} s" if value >= 10_000 else f"{value:.1f} ms"


def _cell(r: dict[str, Any], key: str) -> str:
    if "error" in r:
        return "failed"
    if key in {"sent", "started"}:
        s = r[key]
        text = f"{_ms(s['p50_ms'])} / {_ms(s['p99_ms'])} / {_ms(s['max_ms'])}"
        return text + (f" ({s['missing']} of {r['due']} never)" if s["missing"] else "")
    if key == "ranks":
        return ", ".join(
            f"{rank}: {_ms(s['p50_ms'])} / {_ms(s['p99_ms'])}"
            for rank, s in enumerate(r.get("started_by_rank", []), start=1)
        )
    if key == "count":
        return f"{r['sent']['count']} sent, {r['started']['count']} started of {r['due']}"
    if key == "ticks":
        return (
            f"{r['ticks']} ticks: p50 {r['tick_p50_ms']:.2f} ms, p99 {r['tick_p99_ms']:.1f} ms, "
            f"max {r['tick_max_ms']:.0f} ms"
        )
    if key == "over":
        return str(r["ticks_over_100ms"])
    if key == "gc":
        return (
            f"{r['gc_pauses']} ({r['gc_full']} full), longest {r['gc_max_ms']:.0f} ms"
            if r["gc_pauses"]
            else "none"
        )
    if key == "cpu":
        return f"{r['cpu_pct']:.0f} %"
    if key == "rss":
        return f"{r['rss_load_mib']:.0f} MiB loaded, peak {r['hwm_mib']:.0f} MiB"
    if key == "load":
        return f"{r['load_s']:.1f} s"
    if key == "edits":
        return (
            f"{r['edits']} ({r['edits_per_s']:.1f}/s; {r['edits_cron']} cron, "
            f"{r['edits_pause']} pause, {r['edits_resume']} resume; p50 {r['edit_p50_ms']:.0f} ms)"
        )
    if key == "stray":
        return str(r["stray_sends"])
    raise KeyError(key)


ROWS = [
    ("start-up (construct + load)", "load"),
    ("due runs sent / started", "count"),
    ("due → sent p50 / p99 / max", "sent"),
    ("due → started p50 / p99 / max", "started"),
    ("due → started p50 / p99 of the 1st, 2nd… run of a second to start", "ranks"),
    ("ticks (whole run)", "ticks"),
    ("ticks over 100 ms", "over"),
    ("beat's garbage-collector pauses of 1 ms or more", "gc"),
    ("beat CPU (whole run)", "cpu"),
    ("beat RSS", "rss"),
    ("edits made during the run", "edits"),
    ("idle schedules sent (must be 0)", "stray"),
]


def table(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> str:
    kinds = [kind for kind in KINDS if kind in results]
    head = " | ".join(beatrun.LABELS[k] for k in kinds)
    title = f"{args.idle} idle, {args.per_second}/s for {args.seconds} s, {args.edits} edits/s"
    lines = [f"| {title} | {head} |", "|---|" + "---|" * len(kinds)]
    for label, key in ROWS:
        lines.append(f"| {label} | {' | '.join(_cell(results[k], key) for k in kinds)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--per-second", type=int, default=4)
    parser.add_argument("--edits", type=float, default=10.0, help="edits per second")
    parser.add_argument("--lead", type=float, default=3.0, help="s from loaded to the 1st due")
    parser.add_argument("--grace", type=float, default=30.0, help="s beat runs after the last")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--redis-db", type=int, default=13)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--only", choices=KINDS, help="one scheduler (an A/B of ours); the target needs both"
    )
    args = parser.parse_args()

    results: dict[str, dict[str, Any]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-late-") as tmp_name,
        Receiver() as http,
        scratch_database("bench_late") as database_url,
    ):
        tmp = Path(tmp_name)
        rng = random.Random(args.seed)
        owner = bench_user()
        pool = quiet_pool(rng, datetime.now(UTC), per_zone=40)
        choice = [(cron, zone) for zone in TIMEZONES for cron in pool[zone]]
        began = time.monotonic()
        idle_ids = add_recurring(
            args.idle,
            lambda i: choice[rng.randrange(len(choice))],
            owner=owner,
            action={"type": "webhook", "url": f"{http.url}/idle"},
        )
        print(f"{args.idle} idle tasks added in {time.monotonic() - began:.1f} s", flush=True)
        for kind in [args.only] if args.only else KINDS:
            try:
                results[kind] = run_one(
                    kind, args, database_url, tmp, idle_ids, pool, owner, http.url
                )
            except Exception as exc:  # noqa: BLE001 - report, go on with the next
                print(f"  {kind} failed: {exc}", flush=True)
                results[kind] = {"kind": kind, "error": str(exc)}
        idle_hits = len(http.received("/idle"))
    print(table(args, results), flush=True)
    if idle_hits:
        print(f"WARNING: {idle_hits} idle tasks ran")
    print(
        json.dumps(
            {"bench": "lateness", "args": vars(args), "idle_ran": idle_hits, "results": results},
            default=str,
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
