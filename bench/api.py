"""REST API latency with a large task table and a growing execution history (issue 9).

    .venv/bin/python -m bench.api --tasks 100000 --executions 1000000

Creates a fresh PostgreSQL database ``bench_api_<random>`` (dropped at the end, also on
failure), runs migrate and builds its data in bulk:

* ``--tasks`` recurring tasks ("m h * * *" over 8 timezones), ``--other-share`` of them
  owned by four other users, the rest by the (non-staff) bench user; 5 % paused. Each has
  its django-celery-beat rows as ``schedule_sync`` writes them (a shared CrontabSchedule
  per cron and zone; a PeriodicTask named ``scheduled-task:<uuid>``, task
  ``tasks_app.run_task``, kwargs ``{"task_id": ...}``, enabled while active, last_run_at)
  and its ``next_run``; ``created_at`` is spread over the past year.
* task executions with ``INSERT ... SELECT generate_series``, spread over
  ``--history-tasks`` tasks (90 % the bench user's), one every 6 hours per task going back
  in time, so that the last 24 hours hold the same rows at every history size; 90 %
  scheduled (one per (task, occurrence), as the unique constraint wants), 10 % "run now";
  mostly completed, some failed or skipped.

The API is measured through a real HTTP server: gunicorn (``scheduler_project.wsgi``, one
gthread worker with one thread, keep-alive, DEBUG off, Redis cache for the throttles,
throttle rates raised so that no request is refused) against the bench database, with a
``requests`` keep-alive session and the bench user's token. Each figure: ``--warmup``
requests, then ``--samples`` timed ones, one at a time. History is measured at 0,
executions / 10 and executions rows (ANALYZE after each build). The number of SQL queries
per request is counted once per endpoint in-process (Django test client).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import data
from bench.data import TIMEZONES, admin_sql
from tests.guide import GUIDE_CREATE
from tests.services import POSTGRES_URL, REDIS_URL

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MARK = "@@BENCH@@"
CRONS = [f"{m} {h} * * *" for h in range(24) for m in range(0, 60, 5)]
OTHER_USERS = 4
BATCH = 5000
HISTORY_STEP_HOURS = 6
# The guide's "Daily Report" owned by the caller, a webhook for its action.
CREATE_BODY = {
    **{key: value for key, value in GUIDE_CREATE.items() if key != "userId"},
    "action": {"type": "webhook", "url": "https://api.example.com/notify", "method": "POST"},
}
PREVIEW_BODY = {"schedule": {"cron": "30 2 * * *", "timezone": "America/New_York"}, "count": 10}


def setup_django(database_url: str, data_dir: str) -> None:
    os.environ["SCHEDULER_DATA_DIR"] = data_dir
    os.environ["DJANGO_ALLOWED_HOSTS"] = "localhost,127.0.0.1,testserver"
    data.setup_django(database_url)


# --- data ----------------------------------------------------------------------------


def build_tasks(count: int, other_share: float, rng: random.Random) -> dict[str, Any]:
    """Users, tasks and their beat rows, in bulk. Returns the users and timings."""
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django_celery_beat.models import CrontabSchedule, PeriodicTask, PeriodicTasks

    from tasks_app import cron as cronlib
    from tasks_app.auth import token_issue
    from tasks_app.conf import BEAT_ENTRY_PREFIX, RUN_TASK_NAME
    from tasks_app.models import ScheduledTask, TaskStatus, TaskType

    started = time.monotonic()
    users = get_user_model()
    bench = users.objects.create_user(username="bench")
    others = [users.objects.create_user(username=f"other{i}") for i in range(OTHER_USERS)]
    token = token_issue(bench)
    now = datetime.now(UTC)

    combos = [(cron, tz) for cron in CRONS for tz in TIMEZONES]
    crontabs = CrontabSchedule.objects.bulk_create(
        [CrontabSchedule(timezone=tz, **cronlib.parse(cron, tz).fields()) for cron, tz in combos]
    )
    crontab_of = {combo: row.pk for combo, row in zip(combos, crontabs, strict=True)}
    next_of = {(cron, tz): cronlib.Cron(cron, tz).next_after(now) for cron, tz in combos}

    for lo in range(0, count, BATCH):
        periodic, tasks = [], []
        for i in range(lo, min(lo + BATCH, count)):
            cron, tz = combos[rng.randrange(len(combos))]
            owner = others[i % OTHER_USERS] if rng.random() < other_share else bench
            paused = rng.random() < 0.05
            task_id = uuid.uuid4()
            periodic.append(
                PeriodicTask(
                    name=f"{BEAT_ENTRY_PREFIX}{task_id}",
                    task=RUN_TASK_NAME,
                    kwargs=json.dumps({"task_id": str(task_id)}),
                    crontab_id=crontab_of[cron, tz],
                    enabled=not paused,
                    description=f"bench {i}",
                    last_run_at=now,
                    total_run_count=0,
                )
            )
            tasks.append(
                ScheduledTask(
                    id=task_id,
                    owner=owner,
                    name=f"bench {i}",
                    type=TaskType.RECURRING,
                    cron=cron,
                    timezone=tz,
                    action={"type": "webhook", "url": "https://example.com/bench"},
                    status=TaskStatus.PAUSED if paused else TaskStatus.ACTIVE,
                    paused_at=now if paused else None,
                    next_run=None if paused else next_of[cron, tz],
                )
            )
        with transaction.atomic():
            rows = PeriodicTask.objects.bulk_create(periodic)
            for task, row in zip(tasks, rows, strict=True):
                task.periodic_task_id = row.pk
            ScheduledTask.objects.bulk_create(tasks)
    PeriodicTasks.update_changed()
    with connection.cursor() as cursor:
        # Spread created_at (auto_now_add) over the past year, newest first by name.
        cursor.execute(
            """
            UPDATE scheduled_tasks t SET created_at = %s - s.rn * interval '5 minutes',
                updated_at = %s - s.rn * interval '5 minutes'
            FROM (SELECT id, row_number() OVER (ORDER BY created_at DESC, name) AS rn
                  FROM scheduled_tasks) s
            WHERE t.id = s.id
            """,
            [now, now],
        )
    vacuum_analyze()
    return {
        "bench": bench,
        "others": others,
        "token": token,
        "seconds": time.monotonic() - started,
    }


def vacuum_analyze() -> None:
    import psycopg
    from django.conf import settings

    db = settings.DATABASES["default"]
    dsn = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def choose_history_tasks(bench: Any, count: int, rng: random.Random) -> list[str]:
    """Active tasks that get executions: 90 % the bench user's, 10 % other users'."""
    from tasks_app.models import ScheduledTask, TaskStatus

    active = ScheduledTask.objects.filter(status=TaskStatus.ACTIVE)
    mine = list(active.filter(owner=bench).values_list("pk", flat=True))
    theirs = list(active.exclude(owner=bench).values_list("pk", flat=True))
    chosen = rng.sample(mine, min(len(mine), count - count // 10))
    chosen += rng.sample(theirs, min(len(theirs), count // 10))
    return [str(pk) for pk in chosen]


def add_executions(task_ids: list[str], lo: int, hi: int, anchor: datetime) -> float:
    """Rows g in [lo, hi): task g % K, occurrence anchor - (g // K) * 6 h."""
    from django.db import connection, transaction

    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE IF NOT EXISTS bench_history (rn int PRIMARY KEY, id uuid)"
        )
        cursor.execute("TRUNCATE bench_history")
        cursor.execute(
            "INSERT INTO bench_history SELECT n - 1, id::uuid "
            "FROM unnest(%s::text[]) WITH ORDINALITY AS u(id, n)",
            [task_ids],
        )
    k = len(task_ids)
    chunk = 200_000
    for start in range(lo, hi, chunk):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                f"""
                INSERT INTO task_executions (
                    id, task_id, status, trigger, scheduled_for, payload, queued_at,
                    enqueued_at, started_at, completed_at, duration_ms, attempt, deliveries,
                    next_attempt_at, lease_expires_at, worker, result, error, logs, steps,
                    current_step, input_tokens, output_tokens, notified_at, trigger_depth, held)
                SELECT gen_random_uuid(), h.id, x.status,
                    CASE WHEN x.manual THEN 'manual' ELSE 'scheduled' END,
                    CASE WHEN x.manual THEN NULL ELSE x.at END, NULL, x.at, x.at,
                    x.at + interval '1 second',
                    x.at + interval '1 second' + x.ms * interval '1 millisecond',
                    x.ms, 1, 1, NULL, NULL, 'bench:1',
                    CASE WHEN x.status = 'completed' THEN '{{"status": 200}}'::jsonb END,
                    CASE WHEN x.status = 'failed' THEN 'HTTP 500 from example.com' ELSE '' END,
                    jsonb_build_array(
                        jsonb_build_object('at', x.at, 'level', 'info', 'message', 'started'),
                        jsonb_build_object('at', x.at, 'level', 'info', 'message', x.status)),
                    '[]'::jsonb, NULL, 0, 0, NULL, 0, false
                FROM (
                    SELECT g,
                        g %% 10 = 9 AS manual,
                        CASE WHEN g %% 50 = 7 THEN 'failed' WHEN g %% 50 = 13 THEN 'skipped'
                             ELSE 'completed' END AS status,
                        %(anchor)s - (g / {k}) * interval '{HISTORY_STEP_HOURS} hours'
                            + CASE WHEN g %% 10 = 9 THEN interval '1 minute'
                                   ELSE interval '0' END AS at,
                        (g * 7919) %% 5000 AS ms
                    FROM generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) AS g
                ) x JOIN bench_history h ON h.rn = x.g %% {k}
                """,
                {"anchor": anchor, "lo": start, "hi": min(start + chunk, hi)},
            )
    vacuum_analyze()
    return time.monotonic() - started


# --- server and measuring --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(database_url: str, data_dir: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": f"{REDIS_URL}/0",  # the throttles' cache, as in production
        "SCHEDULER_DATA_DIR": data_dir,
        "DJANGO_DEBUG": "0",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SCHEDULER_THROTTLE_WRITES": "1000000/min",
        "SCHEDULER_THROTTLE_PREVIEWS": "1000000/min",
    }
    log = open(Path(data_dir) / "gunicorn.log", "wb")  # noqa: SIM115 - the server's
    command = [
        str(BIN / "gunicorn"),
        "scheduler_project.wsgi",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        "--worker-class",
        "gthread",
        "--threads",
        "1",
        "--keep-alive",
        "60",
    ]
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
    import requests

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            break
        try:
            requests.get(f"http://127.0.0.1:{port}/api/health", timeout=5)
            return server
        except requests.ConnectionError:
            time.sleep(0.3)
    stop_server(server)
    tail = (Path(data_dir) / "gunicorn.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"gunicorn did not start:\n{tail}")


def stop_server(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


Request = Callable[[int], tuple[str, str, dict[str, Any] | None, int]]


def endpoints(sample_tasks: list[str]) -> dict[str, Request]:
    """name -> (i -> (method, path, JSON body, expected status))."""

    def pick(i: int) -> str:
        return sample_tasks[i % len(sample_tasks)]

    return {
        "POST /api/tasks (create, recurring cron)": lambda i: (
            "POST",
            "/api/tasks",
            {**CREATE_BODY, "name": f"bench create {uuid.uuid4().hex[:8]}"},
            201,
        ),
        "GET /api/tasks (list, default page)": lambda i: ("GET", "/api/tasks", None, 200),
        "GET /api/tasks?status=active": lambda i: ("GET", "/api/tasks?status=active", None, 200),
        "GET /api/tasks/{id}/preview": lambda i: (
            "GET",
            f"/api/tasks/{pick(i)}/preview",
            None,
            200,
        ),
        "POST /api/schedules/preview": lambda i: (
            "POST",
            "/api/schedules/preview",
            PREVIEW_BODY,
            200,
        ),
        "GET /api/stats": lambda i: ("GET", "/api/stats", None, 200),
        "GET /api/tasks/{id}/executions": lambda i: (
            "GET",
            f"/api/tasks/{pick(i)}/executions",
            None,
            200,
        ),
    }


def percentile(sorted_ms: list[float], p: float) -> float:
    return sorted_ms[max(math.ceil(p / 100 * len(sorted_ms)) - 1, 0)]  # nearest rank


def measure_http(
    base: str, token: str, request: Request, warmup: int, samples: int
) -> dict[str, float]:
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Token {token}"
    timings = []
    for i in range(warmup + samples):
        method, path, body, expected = request(i)
        started = time.perf_counter()
        answer = session.request(method, base + path, json=body, timeout=60)
        _ = answer.content
        elapsed = (time.perf_counter() - started) * 1000
        if answer.status_code != expected:
            raise RuntimeError(f"{method} {path}: {answer.status_code} {answer.text[:300]}")
        if i >= warmup:
            timings.append(elapsed)
    session.close()
    timings.sort()
    return {
        "p50": statistics.median(timings),
        "p99": percentile(timings, 99),
        "max": timings[-1],
        "n": len(timings),
    }


def count_queries(token: str, request: Request) -> dict[str, Any]:
    """SQL statements of one request, in-process (Django test client)."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_AUTHORIZATION=f"Token {token}")
    method, path, body, expected = request(0)
    with CaptureQueriesContext(connection) as captured:
        if method == "GET":
            answer = client.get(path)
        else:
            answer = client.post(path, data=body, content_type="application/json")
    if answer.status_code != expected:
        raise RuntimeError(f"{method} {path}: {answer.status_code}")
    slowest = max(captured.captured_queries, key=lambda q: float(q["time"]), default=None)
    return {
        "queries": len(captured.captured_queries),
        "slowest_ms": float(slowest["time"]) * 1000 if slowest else 0.0,
        "slowest_sql": (slowest["sql"][:160] if slowest else ""),
    }


def measure_level(
    base: str, token: str, sample_tasks: list[str], args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    results = {}
    for name, request in endpoints(sample_tasks).items():
        figures = measure_http(base, token, request, args.warmup, args.samples)
        figures.update(count_queries(token, request))
        results[name] = figures
        print(
            f"  {name}: p50 {figures['p50']:.1f} ms, p99 {figures['p99']:.1f} ms, "
            f"max {figures['max']:.1f} ms, {figures['queries']} queries "
            f"(slowest {figures['slowest_ms']:.1f} ms)",
            flush=True,
        )
    return results


def table(levels: list[int], results: dict[int, dict[str, dict[str, Any]]]) -> str:
    head = " | ".join(f"{n:,} executions" for n in levels)
    lines = [
        f"| p50 / p99 / max (ms), queries per request | {head} |",
        "|---|" + "---|" * len(levels),
    ]
    for name in results[levels[0]]:
        cells = []
        for n in levels:
            f = results[n][name]
            cells.append(f"{f['p50']:.1f} / {f['p99']:.1f} / {f['max']:.1f}, {f['queries']} q")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--executions", type=int, default=1_000_000)
    parser.add_argument("--history-tasks", type=int, default=1000)
    parser.add_argument("--other-share", type=float, default=0.1)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    levels = sorted({0, args.executions // 10, args.executions})

    db_name = f"bench_api_{uuid.uuid4().hex[:10]}"
    database_url = f"{POSTGRES_URL}/{db_name}"
    data_dir = tempfile.mkdtemp(prefix="bench_api_")
    server = None
    admin_sql(f'CREATE DATABASE "{db_name}"')
    try:
        setup_django(database_url, data_dir)
        from django.core.management import call_command

        call_command("migrate", "--noinput", verbosity=0)
        rng = random.Random(args.seed)
        built = build_tasks(args.tasks, args.other_share, rng)
        print(
            f"database {db_name}: {args.tasks} tasks ({args.other_share:.0%} other users') "
            f"with beat rows built in {built['seconds']:.1f} s",
            flush=True,
        )
        history = choose_history_tasks(built["bench"], args.history_tasks, rng)
        sample_tasks = history[:50]  # the bench user's, with history
        anchor = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(
            minutes=30
        )
        port = free_port()
        server = start_server(database_url, data_dir, port)
        base = f"http://127.0.0.1:{port}"
        print(
            "measuring through gunicorn (1 gthread worker, 1 thread, keep-alive), "
            f"{args.warmup} warm-up + {args.samples} samples per figure",
            flush=True,
        )
        results: dict[int, dict[str, dict[str, Any]]] = {}
        have = 0
        for level in levels:
            if level > have:
                seconds = add_executions(history, have, level, anchor)
                print(f"executions {have:,} -> {level:,}: {seconds:.1f} s", flush=True)
                have = level
            print(f"history {level:,} executions (load {os.getloadavg()[0]:.2f}):", flush=True)
            results[level] = measure_level(base, built["token"], sample_tasks, args)
        print()
        print(table(levels, results), flush=True)
        print(MARK + json.dumps({"tasks": args.tasks, "results": results}), flush=True)
    finally:
        if server is not None:
            stop_server(server)
        from django.db import connections

        connections.close_all()
        admin_sql(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
