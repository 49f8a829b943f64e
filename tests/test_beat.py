"""tasks_app.beat: cron entries evaluated by tasks_app.cron, and each fire recorded in
the execution ledger under its nominal occurrence before it is published. Messages go
through a real kombu ``memory://`` broker and are read back from the queue."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celery import Celery, schedules
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
)
from kombu import Connection

from tasks_app import cron as cronlib
from tasks_app.beat import CronSchedule, Entry, Scheduler
from tasks_app.conf import RUN_TASK_NAME
from tasks_app.models import ScheduledTask, TaskExecution

NY = "America/New_York"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def schedule_at(expression: str, timezone: str, now: datetime) -> CronSchedule:
    """A CronSchedule whose clock reads ``now`` (celery's own ``nowfun`` hook)."""
    schedule = CronSchedule(cronlib.parse(expression, timezone))
    schedule.nowfun = lambda: now
    return schedule


# --- CronSchedule ------------------------------------------------------------------


def test_is_due_when_an_occurrence_lies_after_the_last_run() -> None:
    now = utc(2025, 1, 15, 14, 0, 30)  # 09:00:30 in New York, a Wednesday
    schedule = schedule_at("0 9 * * 1-5", NY, now)
    state = schedule.is_due(utc(2025, 1, 14, 14, 0, 1))  # yesterday's run
    assert state.is_due is True
    assert state.next == (utc(2025, 1, 16, 14, 0) - now).total_seconds() == 86370.0


def test_is_not_due_once_the_occurrence_has_run() -> None:
    now = utc(2025, 1, 15, 14, 0, 30)
    schedule = schedule_at("0 9 * * 1-5", NY, now)
    assert schedule.is_due(utc(2025, 1, 15, 14, 0, 0, 1)) == (False, 86370.0)


def test_is_not_due_when_last_run_equals_the_occurrence() -> None:
    now = utc(2025, 1, 15, 14, 0, 30)
    schedule = schedule_at("0 9 * * 1-5", NY, now)
    assert schedule.is_due(utc(2025, 1, 15, 14, 0)) == (False, 86370.0)


def test_is_not_due_just_before_the_fire_and_checks_again_soon() -> None:
    now = utc(2025, 1, 15, 13, 59, 59, 990000)
    schedule = schedule_at("0 9 * * 1-5", NY, now)
    # The next check is never sooner than 50 ms, even 10 ms before the fire.
    assert schedule.is_due(utc(2025, 1, 14, 14, 0, 1)) == (False, 0.05)


def test_is_not_due_between_fires_and_sleeps_until_the_next() -> None:
    now = utc(2025, 1, 15, 12, 0)
    schedule = schedule_at("0 9 * * 1-5", NY, now)
    assert schedule.is_due(utc(2025, 1, 14, 14, 0, 1)) == (False, 7200.0)


def test_missed_occurrences_make_it_due_once() -> None:
    now = utc(2025, 1, 20, 16, 0)  # Monday 11:00 New York; beat was down since Thursday
    schedule = schedule_at("0 9 * * 1-5", NY, now)
    last_run = utc(2025, 1, 16, 14, 0, 1)
    assert schedule.is_due(last_run) == (True, (utc(2025, 1, 21, 14, 0) - now).total_seconds())
    assert schedule.occurrence(now) == utc(2025, 1, 20, 14, 0)


def test_is_due_follows_daylight_saving() -> None:
    summer_fire = utc(2025, 7, 15, 13, 0)  # 09:00 EDT
    schedule = schedule_at("0 9 * * *", NY, summer_fire)
    assert schedule.is_due(summer_fire - timedelta(days=1)).is_due is True
    schedule.nowfun = lambda: summer_fire - timedelta(seconds=1)
    assert schedule.is_due(summer_fire - timedelta(days=1)) == (False, 1.0)


def test_never_firing_cron_is_not_due_and_checks_hourly() -> None:
    schedule = CronSchedule(cronlib.Cron("0 0 30 2 *", "UTC"))
    schedule.nowfun = lambda: utc(2025, 1, 1)
    assert schedule.is_due(utc(2024, 1, 1)) == (False, 3600.0)
    assert schedule.occurrence(utc(2025, 1, 1)) is None
    assert schedule.remaining_estimate(utc(2024, 1, 1)) is None


def test_occurrence_is_the_latest_fire_at_or_before() -> None:
    schedule = CronSchedule(cronlib.parse("*/15 * * * *", "UTC"))
    assert schedule.occurrence(utc(2025, 1, 1, 10, 29, 59)) == utc(2025, 1, 1, 10, 15)
    assert schedule.occurrence(utc(2025, 1, 1, 10, 30)) == utc(2025, 1, 1, 10, 30)


def test_remaining_estimate() -> None:
    now = utc(2025, 1, 15, 13, 30)
    schedule = schedule_at("0 9 * * 1-5", NY, now)
    assert schedule.remaining_estimate(utc(2025, 1, 14, 14, 0)) == timedelta(minutes=30)
    # A last run in the future (clock skew) counts from that moment.
    assert schedule.remaining_estimate(utc(2025, 1, 15, 14, 0)) == timedelta(days=1, minutes=30)


def test_equality_hash_and_repr() -> None:
    a = CronSchedule(cronlib.parse("0 9 * * 1-5", NY))
    b = CronSchedule(cronlib.Cron("0 9 * * 1-5", NY))
    c = CronSchedule(cronlib.Cron("0 9 * * 1-5", "UTC"))
    assert a == b and hash(a) == hash(b)
    assert a != c
    assert a != schedules.crontab(minute="0", hour="9", day_of_week="1-5")
    assert repr(a) == "<cron: 0 9 * * 1-5 America/New_York>"


# --- Entry and Scheduler against real rows and a real broker --------------------------


def beat_test_app(broker: str = "memory://") -> Celery:
    """A Celery app of its own for beat tests, on a queue of its own."""
    import tasks_app.tasks  # noqa: F401  (shared_task: run_task joins every app)

    app = Celery("beat-tests", broker=broker, set_as_current=False)
    app.conf.update(
        task_default_queue=f"beat-tests-{uuid.uuid4().hex}",
        task_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        result_expires=None,
        broker_connection_retry_on_startup=False,
    )
    return app


@pytest.fixture
def app() -> Iterator[Celery]:
    app = beat_test_app()
    yield app
    app.close()


@pytest.fixture
def scheduler(app: Celery) -> Iterator[Scheduler]:
    beat = Scheduler(app=app, lazy=True)
    # Its periodic sync calls close_old_connections(), which would close the test's
    # connection in the middle of its transaction; beat's real loop syncs between ticks.
    beat._last_sync = time.monotonic()
    yield beat
    # DatabaseScheduler registers a sync-at-exit finalizer; this one must not touch the
    # test database after the test has gone.
    beat._finalize.cancel()


def sent_messages(app: Celery) -> list[tuple[dict[str, Any], list[Any]]]:
    """Drain the app's default queue on the memory broker: [(headers, [args, kwargs, embed])]."""
    messages = []
    with Connection("memory://") as conn:
        queue = conn.SimpleQueue(app.conf.task_default_queue)
        try:
            while True:
                try:
                    message = queue.get(block=False)
                except queue.Empty:
                    break
                message.ack()
                messages.append((message.headers, message.payload))
        finally:
            queue.close()
    return messages


def crontab_row(expression: str, timezone: str) -> CrontabSchedule:
    return CrontabSchedule.objects.create(
        timezone=timezone, **cronlib.parse(expression, timezone).fields()
    )


def periodic_row(name: str, task: str = RUN_TASK_NAME, **fields: Any) -> PeriodicTask:
    kwargs = fields.pop("kwargs", {"task_id": "11111111-2222-3333-4444-555555555555"})
    return PeriodicTask.objects.create(name=name, task=task, kwargs=json.dumps(kwargs), **fields)


def clear_of_a_minute_boundary(margin: float = 10.0) -> None:
    """Wait until the next minute when fewer than ``margin`` seconds of this one are left:
    a test that fires "* * * * *" and ticks again expects one occurrence, not two. (Its
    row's previous fire is then put 59 s back: exactly one minute mark lies after it.)"""
    now = datetime.now(UTC)
    left = 60 - now.second - now.microsecond / 1e6
    if left < margin:
        time.sleep(left + 0.5)


def new_year_in_new_york() -> datetime:
    """The nominal occurrence of '0 0 1 1 *' in New York right now."""
    zone = ZoneInfo(NY)
    return datetime(datetime.now(zone).year, 1, 1, tzinfo=zone).astimezone(UTC)


@pytest.mark.django_db
def test_entry_for_a_cron_row_uses_cron_schedule(app: Celery) -> None:
    row = periodic_row("scheduled-task:a", crontab=crontab_row("0 9 * * 1-7", NY))
    entry = Entry(row, app=app)
    assert isinstance(entry.schedule, CronSchedule)
    assert entry.schedule.cron == cronlib.Cron("0 9 * * 1-6,0", NY)
    assert entry.schedule.app is app
    assert entry.kwargs == {"task_id": "11111111-2222-3333-4444-555555555555"}


@pytest.mark.django_db
def test_entry_occurrence_is_the_cron_occurrence_now(app: Celery) -> None:
    row = periodic_row("scheduled-task:b", crontab=crontab_row("0 0 1 1 *", NY))
    assert Entry(row, app=app).occurrence() == new_year_in_new_york()


@pytest.mark.django_db
def test_entry_is_due_through_model_entry(app: Celery) -> None:
    row = periodic_row("scheduled-task:c", crontab=crontab_row("* * * * *", "UTC"))
    row.last_run_at = datetime.now(UTC) - timedelta(seconds=61)
    assert Entry(row, app=app).is_due().is_due is True
    row.last_run_at = datetime.now(UTC)
    assert Entry(row, app=app).is_due().is_due is False
    row.enabled = False
    assert Entry(row, app=app).is_due() == (False, 5.0)


@pytest.mark.django_db
def test_entry_for_other_tasks_keeps_celery_schedules(app: Celery) -> None:
    row = periodic_row("other", task="tests.other", crontab=crontab_row("0 9 * * *", NY))
    entry = Entry(row, app=app)
    assert not isinstance(entry.schedule, CronSchedule)
    assert isinstance(entry.schedule, schedules.crontab)
    assert entry.occurrence() is None


@pytest.mark.django_db
def test_entry_occurrence_of_a_clocked_row_is_its_time(app: Celery) -> None:
    clocked = ClockedSchedule.objects.create(clocked_time=utc(2025, 3, 1, 12, 0))
    row = periodic_row("scheduled-task:d", clocked=clocked, one_off=True)
    assert Entry(row, app=app).occurrence() == utc(2025, 3, 1, 12, 0)


@pytest.fixture
def task(django_user_model: Any) -> ScheduledTask:
    """A real recurring task for the test's own beat rows to point at (its schedule is
    the rows' '0 0 1 1 *' in New York; beat records what the task's definition says)."""
    owner = django_user_model.objects.create(username="beat-owner")
    task = ScheduledTask.objects.create(
        owner=owner,
        name="beat target",
        type="recurring",
        cron="0 0 1 1 *",
        timezone=NY,
        action={"type": "webhook", "url": "https://example.com/hook"},
    )
    # Created "last year": this year's New Year occurrence is owed to it.
    ScheduledTask.objects.filter(pk=task.pk).update(
        created_at=new_year_in_new_york() - timedelta(days=30)
    )
    task.refresh_from_db()
    return task


def ledger(task: ScheduledTask) -> list[TaskExecution]:
    return list(TaskExecution.objects.filter(task=task).order_by("scheduled_for"))


@pytest.mark.django_db
def test_apply_async_records_the_occurrence_then_publishes_it(
    app: Celery, scheduler: Scheduler, task: ScheduledTask
) -> None:
    row = periodic_row(
        "scheduled-task:e", crontab=crontab_row("0 0 1 1 *", NY), kwargs={"task_id": str(task.pk)}
    )
    entry = scheduler.Entry(row, app=app)
    result = scheduler.apply_async(entry, advance=False)
    [(headers, (args, kwargs, _embed))] = sent_messages(app)
    [execution] = ledger(task)
    assert (execution.trigger, execution.status) == ("scheduled", "queued")
    assert execution.scheduled_for == new_year_in_new_york()
    assert execution.scheduled_for.isoformat().endswith("-01-01T05:00:00+00:00")
    assert execution.enqueued_at is not None
    assert headers["task"] == RUN_TASK_NAME
    assert headers["id"] == result.id
    assert headers["periodic_task_name"] == "scheduled-task:e"
    assert args == []
    assert kwargs == {"execution_id": str(execution.pk), "attempt": 1}
    # Without advance the row's bookkeeping is the caller's (beat's tick reserves first).
    assert row.total_run_count == 0


@pytest.mark.django_db
@pytest.mark.parametrize("registered", [True, False])
def test_a_run_message_asks_for_no_result_whether_beat_has_the_task_or_not(
    app: Celery, scheduler: Scheduler, task: ScheduledTask, settings: Any, registered: bool
) -> None:
    # `celery beat` sends by name (it does not import the task modules); the message must
    # say what the task would have said, or a Redis result backend subscribes to each run.
    if not registered:
        app.tasks.unregister(RUN_TASK_NAME)
    row = periodic_row(
        "scheduled-task:e", crontab=crontab_row("0 0 1 1 *", NY), kwargs={"task_id": str(task.pk)}
    )
    scheduler.apply_async(scheduler.Entry(row, app=app), advance=False)
    [(headers, _body)] = sent_messages(app)
    assert headers["ignore_result"] is True
    settings.SCHEDULER_CELERY_RESULTS = True
    TaskExecution.objects.all().delete()
    scheduler.apply_async(scheduler.Entry(row, app=app), advance=False)
    [(headers, _body)] = sent_messages(app)
    assert headers["ignore_result"] is False


@pytest.mark.django_db
def test_apply_async_with_advance_reserves_and_records(
    app: Celery, scheduler: Scheduler, task: ScheduledTask
) -> None:
    row = periodic_row(
        "scheduled-task:f", crontab=crontab_row("0 0 1 1 *", NY), kwargs={"task_id": str(task.pk)}
    )
    before = datetime.now(UTC)
    scheduler.apply_async(scheduler.Entry(row, app=app))
    [(_headers, (_args, kwargs, _embed))] = sent_messages(app)
    [execution] = ledger(task)
    assert kwargs == {"execution_id": str(execution.pk), "attempt": 1}
    assert execution.scheduled_for == new_year_in_new_york()
    assert row.total_run_count == 1
    assert row.last_run_at >= before


@pytest.mark.django_db
def test_a_second_fire_of_the_same_occurrence_publishes_nothing(
    app: Celery, scheduler: Scheduler, task: ScheduledTask
) -> None:
    """Two beats (or a restarted one) reaching the same occurrence: one row, one message."""
    row = periodic_row(
        "scheduled-task:g", crontab=crontab_row("0 0 1 1 *", NY), kwargs={"task_id": str(task.pk)}
    )
    other_beat = Scheduler(app=app, lazy=True)
    other_beat._last_sync = time.monotonic()
    try:
        scheduler.apply_async(scheduler.Entry(row, app=app), advance=False)
        assert other_beat.apply_async(other_beat.Entry(row, app=app), advance=False) is None
    finally:
        other_beat._finalize.cancel()
    assert len(sent_messages(app)) == 1
    assert len(ledger(task)) == 1


@pytest.mark.django_db
def test_apply_async_records_a_clocked_row_at_its_time(
    app: Celery, scheduler: Scheduler, task: ScheduledTask
) -> None:
    ScheduledTask.objects.filter(pk=task.pk).update(
        type="one-time", cron="", run_at=utc(2025, 3, 1, 12, 0)
    )
    clocked = ClockedSchedule.objects.create(clocked_time=utc(2025, 3, 1, 12, 0))
    row = periodic_row(
        "scheduled-task:h", clocked=clocked, one_off=True, kwargs={"task_id": str(task.pk)}
    )
    scheduler.apply_async(scheduler.Entry(row, app=app), advance=False)
    [(headers, (_args, kwargs, _embed))] = sent_messages(app)
    [execution] = ledger(task)
    assert headers["task"] == RUN_TASK_NAME
    assert execution.scheduled_for == utc(2025, 3, 1, 12, 0)
    assert kwargs == {"execution_id": str(execution.pk), "attempt": 1}


@pytest.mark.django_db
def test_a_paused_task_gets_a_skipped_record_and_no_message(
    app: Celery, scheduler: Scheduler, task: ScheduledTask
) -> None:
    ScheduledTask.objects.filter(pk=task.pk).update(status="paused")
    row = periodic_row(
        "scheduled-task:p", crontab=crontab_row("0 0 1 1 *", NY), kwargs={"task_id": str(task.pk)}
    )
    assert scheduler.apply_async(scheduler.Entry(row, app=app), advance=False) is None
    assert sent_messages(app) == []
    [execution] = ledger(task)
    assert (execution.status, execution.error) == ("skipped", "skipped: the task is paused")


@pytest.mark.django_db
def test_a_deleted_task_is_not_published(app: Celery, scheduler: Scheduler) -> None:
    row = periodic_row("scheduled-task:x", crontab=crontab_row("0 0 1 1 *", NY))
    assert scheduler.apply_async(scheduler.Entry(row, app=app), advance=False) is None
    assert sent_messages(app) == []
    assert not TaskExecution.objects.exists()


@pytest.mark.django_db
def test_apply_async_leaves_other_tasks_alone(app: Celery, scheduler: Scheduler) -> None:
    row = periodic_row(
        "other", task="tests.other", crontab=crontab_row("0 9 * * *", NY), kwargs={"x": 1}
    )
    scheduler.apply_async(scheduler.Entry(row, app=app), advance=False)
    [(headers, (args, kwargs, _embed))] = sent_messages(app)
    assert headers["task"] == "tests.other"
    assert (args, kwargs) == ([], {"x": 1})


@pytest.mark.django_db
def test_run_task_without_an_occurrence_is_not_sent(app: Celery, scheduler: Scheduler) -> None:
    interval = IntervalSchedule.objects.create(every=10, period=IntervalSchedule.SECONDS)
    row = periodic_row("scheduled-task:i", interval=interval)
    assert scheduler.apply_async(scheduler.Entry(row, app=app), advance=False) is None
    assert sent_messages(app) == []


@pytest.mark.django_db(transaction=True)
def test_beat_tick_sends_a_due_cron_entry_once_with_its_occurrence(
    app: Celery, task: ScheduledTask
) -> None:
    clear_of_a_minute_boundary()
    ScheduledTask.objects.filter(pk=task.pk).update(cron="* * * * *", timezone="UTC")
    row = periodic_row(
        "scheduled-task:j",
        crontab=crontab_row("* * * * *", "UTC"),
        kwargs={"task_id": str(task.pk)},
    )
    PeriodicTask.objects.filter(pk=row.pk).update(
        last_run_at=datetime.now(UTC) - timedelta(seconds=59)
    )
    beat = Scheduler(app=app)
    try:
        before = datetime.now(UTC)
        beat.tick()
        after = datetime.now(UTC)
        beat.tick()  # the same occurrence is not sent again
        beat.sync()
    finally:
        beat.close()
        beat._finalize.cancel()
    messages = sent_messages(app)
    assert len(messages) == 1
    [(headers, (_args, kwargs, _embed))] = messages
    assert headers["task"] == RUN_TASK_NAME
    floor = {moment.replace(second=0, microsecond=0) for moment in (before, after)}
    [execution] = ledger(task)
    assert execution.scheduled_for in floor
    assert kwargs == {"execution_id": str(execution.pk), "attempt": 1}
    row.refresh_from_db()
    assert row.total_run_count == 1
    assert before <= row.last_run_at <= after


@pytest.mark.django_db
def test_write_back_keeps_beats_bookkeeping_when_the_row_is_unchanged(app: Celery) -> None:
    row = periodic_row("scheduled-task:wb1", crontab=crontab_row("* * * * *", "UTC"))
    fired = next(Entry(row, app=app))  # what beat keeps after sending
    fired.save()
    stored = PeriodicTask.objects.get(pk=row.pk)
    assert stored.total_run_count == 1
    assert stored.last_run_at == fired.model.last_run_at
    again = next(fired)
    again.save()  # a later write-back by the same beat still lands
    assert PeriodicTask.objects.get(pk=row.pk).total_run_count == 2


@pytest.mark.django_db
def test_write_back_never_undoes_a_schedule_edit(app: Celery) -> None:
    """Beat fired a one-off, then the task was re-armed (counters reset by the schedule
    sync) before beat's periodic write-back: the reset must survive it."""
    clocked = ClockedSchedule.objects.create(clocked_time=utc(2030, 1, 1, 9, 0))
    row = periodic_row("scheduled-task:wb2", clocked=clocked, one_off=True)
    fired = next(Entry(row, app=app))
    edited = PeriodicTask.objects.get(pk=row.pk)
    edited.clocked = ClockedSchedule.objects.create(clocked_time=utc(2030, 2, 1, 9, 0))
    edited.total_run_count = 0
    edited.last_run_at = utc(2029, 12, 31, 0, 0)
    edited.save()
    fired.save()
    stored = PeriodicTask.objects.get(pk=row.pk)
    assert (stored.total_run_count, stored.last_run_at) == (0, utc(2029, 12, 31, 0, 0))
    assert stored.clocked_id == edited.clocked_id
