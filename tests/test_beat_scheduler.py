"""tasks_app.beat.Scheduler at scale: our tasks' rows kept as slots in a heap, changed
rows taken in without a reload, due slots fired in batches with a fixed number of
queries, and beat's bookkeeping written in bulk without overwriting an edit.

The scheduler runs against real rows and a real (memory) broker; the watcher thread is
off (``poll_seconds = 0``) except in the test that checks it, and changes are handed in
with ``_apply(_read_changes())`` as the thread would."""

from __future__ import annotations

import contextlib
import gc
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import Celery
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_celery_beat.models import (
    ClockedSchedule,
    IntervalSchedule,
    PeriodicTask,
    PeriodicTasks,
)

from tasks_app.beat import Scheduler, Slot
from tasks_app.conf import RUN_TASK_NAME
from tasks_app.models import ScheduledTask, TaskExecution
from tasks_app.services import occurrences
from tasks_app.services.definitions import task_delete, task_pause, task_resume, task_update
from tests.test_beat import (  # noqa: F401 - the app fixture
    app,
    beat_test_app,
    clear_of_a_minute_boundary,
    sent_messages,
)

pytestmark = pytest.mark.django_db


def make_task(owner: Any, **fields: Any) -> ScheduledTask:
    fields.setdefault("type", "recurring")
    if fields["type"] == "recurring":
        fields.setdefault("cron", "* * * * *")
    task = ScheduledTask.objects.create(
        owner=owner, name="t", action={"type": "webhook", "url": "https://example.com/h"}, **fields
    )
    ScheduledTask.objects.filter(pk=task.pk).update(created_at=timezone.now() - timedelta(days=1))
    task.refresh_from_db()
    return task


def make_due(*tasks: ScheduledTask) -> None:
    """The tasks' beat rows last ran 59 s ago: this minute's occurrence (only) is due."""
    clear_of_a_minute_boundary()
    PeriodicTask.objects.filter(pk__in=[t.periodic_task_id for t in tasks]).update(
        last_run_at=timezone.now() - timedelta(seconds=59)
    )


@pytest.fixture
def owner(django_user_model: Any) -> Any:
    return django_user_model.objects.create(username="beat-scale")


@contextlib.contextmanager
def quiet_scheduler(app: Celery) -> Iterator[Scheduler]:  # noqa: F811
    scheduler = Scheduler(app=app, lazy=True)
    scheduler.poll_seconds = 0  # no watcher thread: the test hands the changes in
    scheduler._last_sync = time.monotonic()
    try:
        yield scheduler
    finally:
        scheduler.close()
        scheduler._finalize.cancel()


@pytest.fixture
def beat(app: Celery) -> Iterator[Scheduler]:  # noqa: F811
    with quiet_scheduler(app) as scheduler:
        yield scheduler


def this_minute() -> datetime:
    return timezone.now().replace(second=0, microsecond=0)


def changes(beat: Scheduler) -> None:
    beat._apply(beat._read_changes())


# --- loading ----------------------------------------------------------------------------


def test_our_rows_become_slots_and_other_rows_stay_entries(beat: Scheduler, owner: Any) -> None:
    recurring = make_task(owner, cron="0 9 * * 1-5", timezone="Europe/Berlin")
    once = make_task(owner, type="one-time", run_at=timezone.now() + timedelta(days=3))
    every = IntervalSchedule.objects.create(every=30, period=IntervalSchedule.SECONDS)
    other = PeriodicTask.objects.create(name="other job", task="celery.ping", interval=every)
    routed = PeriodicTask.objects.create(
        name="routed",
        task=RUN_TASK_NAME,
        kwargs=json.dumps({"task_id": str(recurring.pk)}),
        crontab=recurring.periodic_task.crontab,
        queue="special",
    )
    beat._load()
    assert set(beat._slots) == {recurring.periodic_task_id, once.periodic_task_id}
    slot = beat._slots[recurring.periodic_task_id]
    assert slot.task_id == str(recurring.pk)
    assert (slot.cron.expression, slot.cron.timezone) == ("0 9 * * 1-5", "Europe/Berlin")
    assert beat._slots[once.periodic_task_id].clocked == once.run_at
    # Custom routing and other tasks stay django-celery-beat entries, evaluated by celery.
    assert {other.pk, routed.pk} <= set(beat._generic)
    assert {"other job", "routed"} <= set(beat.schedule)


def test_tasks_of_one_schedule_share_one_cron(beat: Scheduler, owner: Any) -> None:
    tasks = [make_task(owner, cron="30 8 * * *", timezone="Asia/Tokyo") for _ in range(3)]
    beat._load()
    crons = {id(beat._slots[t.periodic_task_id].cron) for t in tasks}
    assert len(crons) == 1


def test_an_idle_tick_touches_no_database(beat: Scheduler, owner: Any) -> None:
    make_task(owner, cron="0 0 1 1 *")
    beat._load()
    with CaptureQueriesContext(connection) as queries:
        for _ in range(20):
            wait = beat.tick()
    assert len(queries) == 0
    assert 0 < wait <= beat.max_interval


# --- firing ------------------------------------------------------------------------------


def test_a_due_slot_is_recorded_sent_and_booked_once(
    beat: Scheduler,
    owner: Any,
    app: Celery,  # noqa: F811
) -> None:
    task = make_task(owner)
    make_due(task)
    beat._load()
    before = timezone.now()
    assert beat.tick() >= 0
    beat.tick()  # the same occurrence is not sent again
    [execution] = TaskExecution.objects.filter(task=task)
    assert execution.scheduled_for == this_minute()
    [(headers, (_args, kwargs, _embed))] = sent_messages(app)
    assert headers["task"] == RUN_TASK_NAME
    assert kwargs == {"execution_id": str(execution.pk), "attempt": 1}
    row = PeriodicTask.objects.get(pk=task.periodic_task_id)
    assert row.total_run_count == 1 and row.last_run_at >= before
    # The next occurrence is queued for the next minute.
    slot = beat._slots[task.periodic_task_id]
    live = [due for due, pk in beat._heap if pk == slot.pk and beat._slots.current(pk, due)]
    assert live == [(this_minute() + timedelta(minutes=1)).timestamp()]


def test_a_burst_is_fired_in_one_batch_with_a_fixed_number_of_queries(
    beat: Scheduler,
    owner: Any,
    app: Celery,  # noqa: F811
) -> None:
    def burst(count: int) -> int:
        tasks = [make_task(owner) for _ in range(count)]
        make_due(*tasks)
        beat._load()
        with CaptureQueriesContext(connection) as queries:
            beat.tick()
        assert TaskExecution.objects.filter(task__in=tasks).count() == count
        assert len(sent_messages(app)) == count
        return len(queries)

    assert burst(3) == burst(30)  # (SQLite splits larger inserts by its parameter limit)


def test_a_run_is_decided_just_ahead_and_sent_on_time(
    beat: Scheduler,
    owner: Any,
    app: Celery,  # noqa: F811
) -> None:
    due = timezone.now() + timedelta(milliseconds=500)
    task = make_task(owner, type="one-time", run_at=due)
    beat._load()
    while time.time() < due.timestamp() - beat.lead + 0.01:
        time.sleep(0.002)
    beat.tick()  # just ahead of its time: recorded now, sent at its time
    assert time.time() >= due.timestamp()
    assert 0 <= beat.waited <= beat.lead  # on purpose, within the tick
    [(_headers, (_args, kwargs, _embed))] = sent_messages(app)
    [execution] = TaskExecution.objects.filter(task=task)
    assert kwargs["execution_id"] == str(execution.pk)
    assert execution.scheduled_for == due


def test_a_burst_larger_than_a_batch_is_sent_over_consecutive_ticks(
    beat: Scheduler,
    owner: Any,
    app: Celery,  # noqa: F811
) -> None:
    tasks = [make_task(owner) for _ in range(7)]
    make_due(*tasks)
    beat.batch = 3
    beat._load()
    waits = [beat.tick() for _ in range(3)]
    assert waits[:2] == [0, 0]  # more are due: tick again at once
    assert len(sent_messages(app)) == 7


def test_a_one_off_row_fires_once_and_is_disabled(
    beat: Scheduler,
    owner: Any,
    app: Celery,  # noqa: F811
) -> None:
    task = make_task(owner, type="one-time", run_at=timezone.now() + timedelta(hours=1))
    # It is due now (its clock row moved back, as if an hour had passed).
    moved = timezone.now() - timedelta(seconds=1)
    ClockedSchedule.objects.filter(pk=task.periodic_task.clocked_id).update(clocked_time=moved)
    ScheduledTask.objects.filter(pk=task.pk).update(run_at=moved)
    beat._load()
    beat.tick()
    beat.tick()
    assert len(sent_messages(app)) == 1
    assert task.periodic_task_id not in beat._slots
    row = PeriodicTask.objects.get(pk=task.periodic_task_id)
    assert (row.enabled, row.total_run_count) == (False, 1)


def test_other_entries_are_sent_as_celery_would(
    beat: Scheduler,
    app: Celery,  # noqa: F811
) -> None:
    every = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(name="ping", task="celery.ping", interval=every)
    beat._load()
    time.sleep(1.1)
    beat.tick()
    assert [headers["task"] for headers, _ in sent_messages(app)] == ["celery.ping"]


def test_a_deleted_entry_of_another_task_is_not_sent_again(
    beat: Scheduler,
    app: Celery,  # noqa: F811
) -> None:
    every = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.SECONDS)
    row = PeriodicTask.objects.create(name="ping", task="celery.ping", interval=every)
    beat._load()
    row.delete()  # the watcher never sees a deletion
    time.sleep(1.1)
    beat.tick()
    assert sent_messages(app) == []
    assert "ping" not in beat.schedule


def test_one_broken_task_does_not_hold_up_its_batch(
    beat: Scheduler,
    owner: Any,
    app: Celery,  # noqa: F811
) -> None:
    good, broken = make_task(owner), make_task(owner)
    make_due(good, broken)
    ScheduledTask.objects.filter(pk=broken.pk).update(timezone="Mars/Olympus")
    beat._load()
    beat.tick()
    assert TaskExecution.objects.filter(task=good).count() == 1
    assert len(sent_messages(app)) == 1
    assert not TaskExecution.objects.filter(task=broken).exists()
    retry = beat._slots.due(broken.periodic_task_id)
    assert retry is not None and retry > time.time() + 30  # tried again in a minute


def test_edits_do_not_grow_the_heap(beat: Scheduler, owner: Any) -> None:
    task = make_task(owner, cron="0 0 1 1 *")
    beat._load()
    for minute in range(30):
        task_update(task=task, cron=f"{minute} 0 1 1 *" if minute % 2 else "0 0 1 1 *")
        changes(beat)
    live = [item for item in beat._heap if beat._slots.current(item[1], item[0])]
    assert len(live) == 1
    assert len(beat._heap) <= 2 + 30  # one item per distinct time at most
    beat._compact()
    assert beat._heap == live


# --- changes ----------------------------------------------------------------------------


def test_an_edit_replaces_the_slot_without_a_reload(beat: Scheduler, owner: Any) -> None:
    task = make_task(owner, cron="0 9 * * *")
    beat._load()
    [(old_due, _)] = [item for item in beat._heap if item[1] == task.periodic_task_id]
    task_update(task=task, cron="15 10 * * *")
    changes(beat)
    new = beat._slots[task.periodic_task_id]
    assert new.cron.expression == "15 10 * * *"
    assert not beat._slots.current(task.periodic_task_id, old_due)  # its old item is stale
    live = [due for due, pk in beat._heap if beat._slots.current(pk, due)]
    changes(beat)  # read again by the look-back: nothing changes
    assert [due for due, pk in beat._heap if beat._slots.current(pk, due)] == live
    assert beat._slots[task.periodic_task_id].changed == new.changed


def test_an_entry_enabled_by_the_admins_bulk_action_is_taken_in(beat: Scheduler) -> None:
    every = IntervalSchedule.objects.create(every=30, period=IntervalSchedule.SECONDS)
    row = PeriodicTask.objects.create(name="job", task="celery.ping", interval=every, enabled=False)
    long_ago = timezone.now() - timedelta(hours=1)  # outside the watcher's look-back
    PeriodicTask.objects.filter(pk=row.pk).update(date_changed=long_ago)
    beat._load()
    assert "job" not in beat.schedule
    # django-celery-beat's admin "enable" action: a bulk update, then the change marker.
    PeriodicTask.objects.filter(pk=row.pk).update(enabled=True)
    PeriodicTasks.update_changed()
    changes(beat)
    assert "job" in beat.schedule


def test_an_edited_interval_of_another_job_is_taken_in(beat: Scheduler) -> None:
    """Saving an IntervalSchedule (the admin's form) moves only django-celery-beat's change
    marker; the job's row keeps its date_changed."""
    every = IntervalSchedule.objects.create(every=3600, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(name="job", task="celery.ping", interval=every)
    beat._load()
    assert beat.schedule["job"].schedule.run_every == timedelta(hours=1)
    ran = timezone.now()
    beat.schedule["job"].last_run_at = ran  # run, not yet written back to its row
    kept = beat.schedule["job"]
    PeriodicTasks.update_changed()  # any other change (an edit of one of our tasks)
    changes(beat)
    assert beat.schedule["job"] is kept  # its schedule did not change: left as it is
    every.every = 30
    every.save()
    changes(beat)
    assert beat.schedule["job"].schedule.run_every == timedelta(seconds=30)
    assert beat.schedule["job"].last_run_at == ran  # never run again for the edit


def test_an_entry_whose_row_cannot_be_read_again_is_kept_as_it_was(
    beat: Scheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    every = IntervalSchedule.objects.create(every=3600, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(name="job", task="celery.ping", interval=every)
    beat._load()
    kept = beat.schedule["job"]
    kept.last_run_at = timezone.now()  # run, not yet written back
    every.every = 30
    every.save()
    rows = beat._read_changes()

    def down(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("the database is restarting")

    monkeypatch.setattr(type(PeriodicTask.objects), "filter", down)
    beat._apply(rows)
    monkeypatch.undo()
    assert beat.schedule["job"] is kept  # not forgotten meanwhile
    beat.tick()  # the row is read again on the next tick
    assert beat.schedule["job"].schedule.run_every == timedelta(seconds=30)
    assert beat.schedule["job"].last_run_at == kept.last_run_at


def test_pause_removes_the_slot_and_a_new_task_adds_one(beat: Scheduler, owner: Any) -> None:
    paused = make_task(owner, cron="0 9 * * *")
    beat._load()
    task_pause(task=paused, reason="holiday")
    fresh = make_task(owner, cron="0 7 * * *")
    changes(beat)
    assert paused.periodic_task_id not in beat._slots
    assert fresh.periodic_task_id in beat._slots


def test_a_deleted_task_never_fires_from_its_stale_slot(
    beat: Scheduler,
    owner: Any,
    app: Celery,  # noqa: F811
) -> None:
    task = make_task(owner)
    make_due(task)
    beat._load()
    pk = task.periodic_task_id
    task_delete(task=task)  # not read by the watcher yet
    beat.tick()
    assert sent_messages(app) == []
    assert pk not in beat._slots


def test_an_edit_not_yet_read_is_checked_before_the_fire(
    beat: Scheduler,
    owner: Any,
    app: Celery,  # noqa: F811
) -> None:
    task = make_task(owner)
    make_due(task)
    beat._load()
    # Rescheduled to a yearly cron before the watcher saw it: the due slot is stale.
    task_update(task=task, cron="0 0 1 1 *")
    beat.tick()
    assert sent_messages(app) == []
    assert beat._slots[task.periodic_task_id].cron.expression == "0 0 1 1 *"


def test_bookkeeping_never_overwrites_an_edit(beat: Scheduler, owner: Any) -> None:
    task = make_task(owner)
    beat._load()
    slot = beat._slots[task.periodic_task_id]
    PeriodicTask.objects.filter(pk=slot.pk).update(
        last_run_at=datetime(2030, 1, 1, tzinfo=UTC), date_changed=timezone.now()
    )
    beat._bookkeep([slot], timezone.now())
    row = PeriodicTask.objects.get(pk=slot.pk)
    assert (row.last_run_at, row.total_run_count) == (datetime(2030, 1, 1, tzinfo=UTC), 0)


def test_slots_are_kept_column_wise_not_as_objects(beat: Scheduler, owner: Any) -> None:
    tasks = [make_task(owner, cron=f"{minute} 3 * * *") for minute in range(5)]
    beat._load()
    gc.collect()
    assert not [thing for thing in gc.get_objects() if type(thing) is Slot]
    slot = beat._slots[tasks[2].periodic_task_id]
    assert (slot.task_id, slot.cron.expression) == (str(tasks[2].pk), "2 3 * * *")


def test_a_paused_and_resumed_task_leaves_no_stale_heap_item(
    beat: Scheduler,
    owner: Any,
    app: Celery,  # noqa: F811
) -> None:
    task = make_task(owner)
    make_due(task)
    beat._load()
    stale = [item for item in beat._heap if item[1] == task.periodic_task_id]
    task_pause(task=task)
    changes(beat)
    task_resume(task=task)  # re-armed: its due time is the next minute now
    changes(beat)
    assert all(not beat._slots.current(pk, due) for due, pk in stale)
    beat.tick()
    assert sent_messages(app) == []


@pytest.mark.django_db(transaction=True)
def test_the_watcher_thread_takes_in_a_change_within_a_second(
    app: Celery,  # noqa: F811
    django_user_model: Any,
) -> None:
    owner = django_user_model.objects.create(username="watched")
    task = make_task(owner, cron="0 9 * * *")
    scheduler = Scheduler(app=app)
    try:
        assert scheduler._watcher is not None and scheduler._watcher.is_alive()
        task_update(task=task, cron="45 23 * * *")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            time.sleep(min(scheduler.tick(), 0.05))
            slot = scheduler._slots.get(task.periodic_task_id)
            if slot is not None and slot.cron.expression == "45 23 * * *":
                break
        took = 5 - (deadline - time.monotonic())
        assert slot is not None and slot.cron.expression == "45 23 * * *"
        assert took < 1.5
    finally:
        scheduler.close()
        scheduler._finalize.cancel()
    assert not scheduler._watcher.is_alive()


# --- the batched fire keeps the per-task decisions ----------------------------------------


def test_occurrences_fire_decides_each_task_as_occurrence_fire_does(owner: Any) -> None:
    clear_of_a_minute_boundary()
    now = this_minute() + timedelta(seconds=5)
    on_time = make_task(owner)
    paused = make_task(owner)
    task_pause(task=paused)
    behind = make_task(owner)
    TaskExecution.objects.create(task=behind, trigger="scheduled", scheduled_for=now)
    missed = make_task(owner, misfire_policy="skip")
    fires = [
        occurrences.Fire(on_time.pk, this_minute(), this_minute() - timedelta(minutes=1)),
        occurrences.Fire(paused.pk, this_minute(), None),
        occurrences.Fire(behind.pk, this_minute(), None),  # older than its newest record
        occurrences.Fire(missed.pk, this_minute(), this_minute() - timedelta(minutes=4)),
        occurrences.Fire("not-a-task", this_minute(), None),
        occurrences.Fire(on_time.pk, this_minute(), None),  # the same task twice
    ]
    published = occurrences.occurrences_fire(fires, now=now)
    assert [len(runs) for runs in published] == [1, 0, 0, 1, 0, 0]
    assert TaskExecution.objects.filter(task=on_time).count() == 1
    [skipped] = TaskExecution.objects.filter(task=paused)
    assert skipped.status == "skipped" and "paused" in skipped.error
    assert TaskExecution.objects.filter(task=behind).count() == 1
    # Three minutes missed between the previous fire and this one: skipped under skip.
    statuses = list(
        TaskExecution.objects.filter(task=missed)
        .order_by("scheduled_for")
        .values_list("status", flat=True)
    )
    assert statuses == ["skipped", "skipped", "skipped", "queued"]


def test_a_beat_row_is_stamped_again_when_its_transaction_commits(
    owner: Any, django_capture_on_commit_callbacks: Any
) -> None:
    """A long transaction (an import) commits rows whose date_changed is older than the
    watcher's look-back; the schedule sync stamps them again once they are visible."""
    with django_capture_on_commit_callbacks(execute=True):
        task = make_task(owner, cron="0 9 * * *")
        PeriodicTask.objects.filter(pk=task.periodic_task_id).update(
            date_changed=timezone.now() - timedelta(minutes=5)
        )
    stamped = PeriodicTask.objects.get(pk=task.periodic_task_id).date_changed
    assert stamped > timezone.now() - timedelta(seconds=5)


@pytest.mark.django_db
def test_setup_readies_the_first_send(
    app: Celery,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first due run is sent as fast as the next: the result backend is found, the
    producer connected and the runs' queue declared while the schedule loads."""
    from kombu import Producer

    declared: list[str] = []
    real = Producer.maybe_declare

    def spy(self: Any, entity: Any, *args: Any, **kwargs: Any) -> Any:
        declared.append(entity.name)
        return real(self, entity, *args, **kwargs)

    monkeypatch.setattr(Producer, "maybe_declare", spy)
    scheduler = Scheduler(app=app, lazy=True)
    scheduler.poll_seconds = 0
    gc.unfreeze()
    try:
        scheduler.setup_schedule()
        assert declared == [app.conf.task_default_queue]
        assert "producer" in scheduler.__dict__  # connected
        assert getattr(app._local, "backend", None) is not None
        # What it loaded is out of the cyclic collector's sight (no full-collection stall).
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        scheduler.close()
        scheduler._finalize.cancel()


@pytest.mark.django_db
def test_setup_does_not_wait_for_a_broker_that_does_not_answer(
    app: Celery,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from kombu import Connection

    opened: list[Any] = []

    def unanswered(**options: Any) -> Any:
        opened.append(options)
        return Connection("redis://127.0.0.1:9/0", **options)

    monkeypatch.setattr(app, "connection_for_write", unanswered)
    scheduler = Scheduler(app=app, lazy=True)
    scheduler.poll_seconds = 0
    began = time.monotonic()
    try:
        scheduler.setup_schedule()
    finally:
        gc.unfreeze()
        scheduler.close()
        scheduler._finalize.cancel()
    assert time.monotonic() - began < 5
    assert "could not ready the first send" in caplog.text
    assert "Connection refused" in caplog.text  # the cause, in the traceback
    assert opened[0]["transport_options"]["socket_connect_timeout"] == 2  # bounded
    assert "producer" not in scheduler.__dict__


def test_the_lead_is_a_setting(app: Celery, settings: Any) -> None:  # noqa: F811
    settings.SCHEDULER_BEAT_LEAD_MS = 250
    scheduler = Scheduler(app=app, lazy=True)
    try:
        assert scheduler.lead == 0.25
    finally:
        scheduler.close()
        scheduler._finalize.cancel()


# --- on Redis: a fire's runs go out together ----------------------------------------------


@pytest.fixture
def redis_beat() -> Iterator[tuple[Scheduler, Celery]]:
    from tests.services import REDIS_URL, require_redis

    require_redis()
    redis_app = beat_test_app(f"{REDIS_URL}/14")
    with quiet_scheduler(redis_app) as scheduler:
        yield scheduler, redis_app
    with redis_app.connection_for_write() as conn:
        conn.default_channel.client.delete(redis_app.conf.task_default_queue)
    redis_app.close()


def _waiting(redis_app: Celery) -> int:
    with redis_app.connection_for_write() as conn:
        return int(conn.default_channel.client.llen(redis_app.conf.task_default_queue))


def _drained(redis_app: Celery) -> list[dict[str, Any]]:
    """The kwargs of the run messages waiting on the queue, taken off it."""
    import base64

    with redis_app.connection_for_write() as conn:
        client = conn.default_channel.client
        name = redis_app.conf.task_default_queue
        waiting = client.lrange(name, 0, -1)
        client.delete(name)
    return [json.loads(base64.b64decode(json.loads(raw)["body"]))[1] for raw in waiting]


def _sent_once_each(redis_app: Celery, tasks: list[ScheduledTask]) -> bool:
    """The queue holds one run message for each of the tasks' executions (taken off)."""
    sent = sorted(kwargs["execution_id"] for kwargs in _drained(redis_app))
    return sent == sorted(
        str(pk) for pk in TaskExecution.objects.filter(task__in=tasks).values_list("pk", flat=True)
    )


def test_on_redis_the_runs_of_a_fire_reach_the_broker_together_on_time(
    redis_beat: tuple[Scheduler, Celery], owner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beat builds the messages ahead and hands them over in one pipeline at their time:
    none is on the queue before it, all are after it."""
    from kombu.transport.redis import PublishBatch

    beat, redis_app = redis_beat
    due = timezone.now() + timedelta(milliseconds=600)
    tasks = [make_task(owner, type="one-time", run_at=due) for _ in range(3)]
    beat._load()
    flushes: list[tuple[int, int, float]] = []
    real = PublishBatch.flush

    def spy(self: Any) -> None:
        before = _waiting(redis_app)
        real(self)
        flushes.append((before, _waiting(redis_app), time.time()))

    monkeypatch.setattr(PublishBatch, "flush", spy)
    while time.time() < due.timestamp() - beat.lead + 0.01:
        time.sleep(0.002)
    beat.tick()
    [(before, after, at)] = flushes
    assert (before, after) == (0, 3)
    assert at >= due.timestamp()
    assert _sent_once_each(redis_app, tasks)


def test_on_redis_runs_a_batch_may_not_have_delivered_are_sent_again_one_by_one(
    redis_beat: tuple[Scheduler, Celery],
    owner: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """kombu says a failed flush's delivery is uncertain: beat sends each run again with
    Celery's retries (a run sent twice is claimed once), so none waits for the recovery."""
    from kombu.exceptions import BatchPublishError
    from kombu.transport.redis import PublishBatch

    beat, redis_app = redis_beat
    tasks = [make_task(owner) for _ in range(3)]
    make_due(*tasks)
    beat._load()

    def lost(self: Any) -> None:
        self.pipeline.reset()
        self._buffered = 0
        raise BatchPublishError("Redis publish batch failed; delivery is uncertain")

    monkeypatch.setattr(PublishBatch, "flush", lost)
    beat.tick()
    assert "may not have reached the broker" in caplog.text
    assert _sent_once_each(redis_app, tasks)


def test_on_redis_a_beat_stopping_mid_fire_sends_what_it_built(
    redis_beat: tuple[Scheduler, Celery], owner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM makes celery beat raise SystemExit, here while it waits for the runs' time:
    the runs go out then (a little early) instead of waiting for the recovery job."""
    beat, redis_app = redis_beat
    tasks = [make_task(owner) for _ in range(2)]
    make_due(*tasks)
    beat._load()

    def stopped(at: float) -> None:
        raise SystemExit(0)

    monkeypatch.setattr(beat, "_wait_until", stopped)
    with pytest.raises(SystemExit):
        beat.tick()
    assert _sent_once_each(redis_app, tasks)


def test_on_redis_a_large_fire_already_due_goes_out_as_it_is_built(
    redis_beat: tuple[Scheduler, Celery], owner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kombu.transport.redis import PublishBatch

    from tasks_app import beat as beat_module

    beat, redis_app = redis_beat
    monkeypatch.setattr(beat_module, "LATE_FLUSH_EVERY", 2)
    tasks = [make_task(owner) for _ in range(5)]
    make_due(*tasks)  # due since the minute began: already late when built
    beat._load()
    flushed: list[int] = []
    real = PublishBatch.flush

    def spy(self: Any) -> None:
        real(self)
        flushed.append(_waiting(redis_app))

    monkeypatch.setattr(PublishBatch, "flush", spy)
    beat.tick()
    assert flushed[:3] == [2, 4, 5]  # every 2 as built, the rest at the end
    assert len(_drained(redis_app)) == 5
