"""Time you can trust, with real processes on PostgreSQL + Redis (issue 6's acceptance):

* two beats and two workers for three minutes: no occurrence runs twice; a task whose
  run takes longer than its interval never runs twice at once (overlapPolicy skip, and
  queue: the next one waits and then runs);
* beat and worker stopped: on restart a per-minute task runs its latest missed occurrence
  once (misfirePolicy runOnce) and every other missed occurrence is recorded as skipped,
  saying why.

The outage runs on a second stack at the same time as the three-minute run, so the two
cost three minutes of CI together. Its length is partly simulated: the processes are
really stopped across a minute boundary, and the task's history (ledger rows, beat's
last-run bookkeeping, creation time) is moved ten minutes into the past while they are
down, which is the state a ten-minute outage leaves behind.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.http_receiver import Receiver, Reply
from tests.integration.conftest import create_tasks, make_stack
from tests.integration.stack import Stack, procfile_commands, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SLOW_SECONDS = 75  # longer than the one-minute interval
LONG_RUNS = {
    "SCHEDULER_TASK_TIME_LIMIT": "150",
    "SCHEDULER_LEASE_GRACE": "10",
    "CELERY_VISIBILITY_TIMEOUT": "600",
    "SCHEDULER_EGRESS_TIMEOUT": "120",
}
COLUMNS = "scheduled_for, status, started_at, completed_at, error, logs, attempt"


def ledger(stack: Stack, task_id: str) -> list[dict[str, Any]]:
    rows = stack.query(
        f"SELECT {COLUMNS} FROM task_executions WHERE task_id = ? AND trigger = 'scheduled'"
        " ORDER BY scheduled_for",
        (task_id,),
    )
    names = [c.strip() for c in COLUMNS.split(",")]
    return [dict(zip(names, row, strict=True)) for row in rows]


def start_processes(stack: Stack, *, beats: int, workers: int) -> None:
    commands = procfile_commands()
    for index in range(1, workers + 1):
        stack.start(f"worker{index}", f"{commands['worker']} -n w{index}@%h")
    for index in range(1, beats + 1):
        stack.start(f"beat{index}", commands["beat"])


def webhook(http: Receiver, path: str, **extra: Any) -> dict[str, Any]:
    return {"type": "webhook", "url": f"{http.url}{path}", "timeout": 120, **extra}


def every_minute(name: str, action: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": name, "type": "recurring", "cron": "* * * * *", "action": action, **fields}


def seconds_into_minute() -> float:
    now = datetime.now(UTC)
    return now.second + now.microsecond / 1e6


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        server.reply("/slow-skip", Reply(delay=SLOW_SECONDS))
        server.reply("/slow-queue", Reply(delay=SLOW_SECONDS))
        yield server


def outage(tmp: Any, http: Receiver, report: dict[str, Any]) -> None:
    """The second stack: one beat, one worker, a per-minute task; stop, rewind, restart."""
    stack = make_stack("postgres-redis", tmp, extra_env=LONG_RUNS)
    try:
        stack.manage("migrate", "--noinput")
        start_processes(stack, beats=1, workers=1)
        [task_id] = create_tasks(stack, every_minute("outage", webhook(http, "/outage")))
        report["task_id"] = task_id
        # Its first occurrence runs normally.
        wait_until(
            lambda: any(r["status"] == "completed" for r in ledger(stack, task_id)),
            timeout=100,
            message=stack.log_tail(),
        )
        # Stop beat and worker (SIGTERM: beat writes its bookkeeping back) mid-minute.
        wait_until(lambda: 3 < seconds_into_minute() < 40, timeout=60, interval=0.2)
        for name in ("beat1", "worker1"):
            stack.stop_process(name)
        stopped_at = datetime.now(UTC)
        report["stopped_at"] = stopped_at
        ten = "interval '10 minutes'"
        stack.query(
            f"UPDATE task_executions SET scheduled_for = scheduled_for - {ten},"
            f" queued_at = queued_at - {ten}, started_at = started_at - {ten},"
            f" completed_at = completed_at - {ten} WHERE task_id = ? RETURNING id",
            (task_id,),
        )
        stack.query(
            f"UPDATE scheduled_tasks SET created_at = created_at - {ten} WHERE id = ? RETURNING id",
            (task_id,),
        )
        stack.query(
            f"UPDATE django_celery_beat_periodictask SET last_run_at = last_run_at - {ten}"
            " WHERE name = ? RETURNING id",
            (f"scheduled-task:{task_id}",),
        )
        # Stay down across the next minute boundary, then start again.
        boundary = stopped_at.replace(second=0, microsecond=0) + timedelta(minutes=1)
        time.sleep(max((boundary - datetime.now(UTC)).total_seconds() + 2, 0))
        report["restarted_at"] = datetime.now(UTC)
        report["requests_before"] = len(http.received("/outage"))
        start_processes(stack, beats=1, workers=1)
        report["rows"] = wait_until(
            lambda: (
                [r for r in ledger(stack, task_id) if r["scheduled_for"] >= boundary]
                and all(r["status"] in {"completed", "skipped"} for r in ledger(stack, task_id))
                and ledger(stack, task_id)
            ),
            timeout=60,
            message=stack.log_tail(),
        )
        report["boundary"] = boundary
        report["requests_after"] = len(http.received("/outage"))
    except BaseException as exc:  # noqa: BLE001 - reported to the test in the main thread
        report["error"] = f"{exc!r}\n{stack.log_tail()}"
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> dict[str, Any]:
    """Three minutes of two beats and two workers, with the outage stack alongside."""
    report: dict[str, Any] = {}
    side = threading.Thread(
        target=outage, args=(tmp_path_factory.mktemp("outage"), receiver, report), daemon=True
    )
    side.start()
    stack = make_stack("postgres-redis", tmp_path_factory.mktemp("twobeats"), extra_env=LONG_RUNS)
    try:
        stack.manage("migrate", "--noinput")
        start_processes(stack, beats=2, workers=2)
        fast, skip, queue = create_tasks(
            stack,
            every_minute("fast", webhook(receiver, "/fast")),
            every_minute("slow, skip", webhook(receiver, "/slow-skip")),
            every_minute("slow, queue", webhook(receiver, "/slow-queue"), overlap_policy="queue"),
        )
        started = datetime.now(UTC)
        time.sleep(185)  # three minute boundaries and then some
        for name in list(stack.processes):  # nothing moves while the ledger is read
            stack.stop_process(name)
        ids = {"fast": fast, "skip": skip, "queue": queue}
        result = {name: ledger(stack, task_id) for name, task_id in ids.items()}
        result["started"] = started
        result["log"] = stack.log_tail(40)
    finally:
        stack.stop()
    side.join(timeout=240)
    result["outage"] = report
    return result


def keys(receiver: Receiver, path: str) -> list[str]:
    return [r.headers.get("Idempotency-Key", "") for r in receiver.received(path)]


def assert_never_at_once(rows: list[dict[str, Any]]) -> None:
    spans = sorted(
        (row["started_at"], row["completed_at"] or datetime.now(UTC))
        for row in rows
        if row["started_at"] is not None
    )
    for (_, first_end), (second_start, _) in zip(spans, spans[1:], strict=False):
        assert second_start >= first_end, f"two runs at once: {spans}"


def test_two_beats_and_two_workers_run_every_occurrence_once(
    runs: dict[str, Any], receiver: Receiver
) -> None:
    rows = runs["fast"]
    occurrences = [row["scheduled_for"] for row in rows]
    assert len(occurrences) >= 3, runs["log"]
    assert occurrences == sorted(set(occurrences))
    assert all(
        b - a == timedelta(minutes=1) for a, b in zip(occurrences, occurrences[1:], strict=False)
    )
    done = [row for row in rows if row["status"] == "completed"]
    assert len(done) >= 3 and all(row["attempt"] == 1 for row in done)
    sent = keys(receiver, "/fast")
    assert (
        len(sent) == len(set(sent)) == len(done) + sum(row["status"] == "running" for row in rows)
    )


def test_a_run_longer_than_its_interval_never_runs_twice_at_once_under_skip(
    runs: dict[str, Any], receiver: Receiver
) -> None:
    rows = runs["skip"]
    assert_never_at_once(rows)
    skipped = [row for row in rows if row["status"] == "skipped"]
    assert skipped, rows
    assert all("overlap: the run of" in row["error"] for row in skipped)
    assert all("(overlapPolicy skip)" in row["error"] for row in skipped)
    started = [row for row in rows if row["started_at"] is not None]
    sent = keys(receiver, "/slow-skip")
    assert len(sent) == len(set(sent)) == len(started)


def test_queue_makes_the_next_run_wait_for_the_previous_one(
    runs: dict[str, Any], receiver: Receiver
) -> None:
    rows = runs["queue"]
    assert_never_at_once(rows)
    waited = [
        row
        for row in rows
        if any("waiting for the task's previous run" in e["message"] for e in row["logs"])
    ]
    assert waited, rows
    # The one that waited started when the one before it finished.
    assert any(row["started_at"] is not None for row in waited), rows
    sent = keys(receiver, "/slow-queue")
    assert len(sent) == len(set(sent))


def test_after_an_outage_run_once_runs_the_latest_and_records_the_rest_skipped(
    runs: dict[str, Any], receiver: Receiver
) -> None:
    report = runs["outage"]
    assert "error" not in report, report.get("error")
    rows, boundary = report["rows"], report["boundary"]
    # The ledger after the outage: the runs from before it (moved ten minutes back), then
    # every minute of the outage once and in order, the latest of them run on restart.
    last_before = boundary - timedelta(minutes=1) - timedelta(minutes=10)
    before = [row for row in rows if row["scheduled_for"] <= last_before]
    outage = [row for row in rows if row["scheduled_for"] > last_before]
    assert before and all(row["status"] == "completed" for row in before), rows
    expected = [last_before + timedelta(minutes=i) for i in range(1, 12)]
    assert [row["scheduled_for"] for row in outage][:11] == expected, rows
    missed, latest = outage[:10], outage[10]
    assert latest["scheduled_for"] == boundary and latest["status"] == "completed"
    assert all(row["status"] == "skipped" and row["started_at"] is None for row in missed)
    assert all(row["error"].startswith("skipped: missed (downtime)") for row in missed)
    assert "runOnce runs only the latest missed occurrence" in missed[0]["error"]
    # Fired once on restart: the receiver saw one request per started run, no more.
    started = [row for row in rows if row["started_at"] is not None]
    sent = keys(receiver, "/outage")
    assert len(sent) == len(set(sent)) == len(started)
    assert report["requests_after"] - report["requests_before"] >= 1
