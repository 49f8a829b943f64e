"""Schedule sync: each definition change leaves exactly the beat rows it implies, in the
same transaction, however the task was saved."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    PeriodicTask,
    PeriodicTasks,
)

from tasks_app import cron as cronlib
from tasks_app.conf import RUN_TASK_NAME
from tasks_app.models import ScheduledTask, TaskStatus
from tasks_app.services.definitions import (
    task_create,
    task_delete,
    task_pause,
    task_resume,
    task_update,
)
from tasks_app.services.schedules import compute_next_run, schedule_sync

pytestmark = pytest.mark.django_db

WEBHOOK = {"type": "webhook", "url": "https://example.com/hook"}


def recurring(owner: Any, cron: str = "30 9 * * 1-5", tz: str = "UTC", **kw: Any) -> ScheduledTask:
    return task_create(
        owner=owner, name="rec", type="recurring", action=WEBHOOK, cron=cron, timezone=tz, **kw
    )


def one_time(owner: Any, run_at: datetime | None = None) -> ScheduledTask:
    run_at = run_at or (timezone.now() + timedelta(hours=2)).replace(microsecond=0)
    return task_create(owner=owner, name="once", type="one-time", action=WEBHOOK, run_at=run_at)


def trigger(owner: Any) -> ScheduledTask:
    return task_create(
        owner=owner,
        name="trig",
        type="trigger",
        action=WEBHOOK,
        trigger={"type": "event", "config": {"event": "x"}},
    )


def periodic_of(task: ScheduledTask) -> PeriodicTask:
    task.refresh_from_db()
    assert task.periodic_task_id is not None
    return PeriodicTask.objects.select_related("crontab", "clocked").get(pk=task.periodic_task_id)


def next_daily(now: datetime, hour: int, minute: int, zone: str) -> datetime:
    """Independent computation of the next hh:mm in a zone without DST."""
    local = now.astimezone(ZoneInfo(zone))
    candidate = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if candidate <= local:
        candidate += timedelta(days=1)
    return candidate.astimezone(UTC)


def test_recurring_gets_a_crontab_in_its_timezone(user: Any) -> None:
    task = recurring(user, cron="30 9 * * 1-5", tz="Europe/Paris")
    periodic = periodic_of(task)
    assert periodic.name == f"scheduled-task:{task.id}"
    assert periodic.task == RUN_TASK_NAME == "tasks_app.run_task"
    assert json.loads(periodic.kwargs) == {"task_id": str(task.id)}
    assert json.loads(periodic.args) == []
    assert periodic.enabled is True
    assert periodic.one_off is False
    assert periodic.clocked is None
    assert periodic.interval is None
    assert periodic.solar is None
    assert periodic.description == "rec"
    crontab = periodic.crontab
    assert (
        crontab.minute,
        crontab.hour,
        crontab.day_of_month,
        crontab.month_of_year,
        crontab.day_of_week,
    ) == ("30", "9", "*", "*", "1-5")
    assert str(crontab.timezone) == "Europe/Paris"
    assert PeriodicTask.objects.count() == 1


def test_one_time_gets_a_one_off_clocked_schedule(user: Any) -> None:
    at = datetime(2099, 3, 4, 5, 6, 7, tzinfo=UTC)
    task = one_time(user, run_at=at)
    periodic = periodic_of(task)
    assert periodic.one_off is True
    assert periodic.crontab is None
    assert periodic.clocked.clocked_time == at
    assert periodic.task == RUN_TASK_NAME
    assert json.loads(periodic.kwargs) == {"task_id": str(task.id)}
    assert periodic.enabled is True


def test_trigger_task_has_no_beat_row(user: Any) -> None:
    task = trigger(user)
    task.refresh_from_db()
    assert task.periodic_task_id is None
    assert task.next_run is None
    assert PeriodicTask.objects.count() == 0


def test_pause_disables_and_resume_enables(user: Any) -> None:
    task = recurring(user)
    before = periodic_of(task)
    task_pause(task=task)
    paused = periodic_of(task)
    assert paused.pk == before.pk
    assert paused.enabled is False
    assert ScheduledTask.objects.get(pk=task.pk).next_run is None

    task_resume(task=task)
    resumed = periodic_of(task)
    assert resumed.pk == before.pk
    assert resumed.enabled is True
    assert resumed.crontab_id == before.crontab_id
    # Occurrences missed while paused are not owed: the beat row starts counting afresh.
    assert resumed.last_run_at is not None
    assert resumed.last_run_at >= paused.date_changed
    assert ScheduledTask.objects.get(pk=task.pk).next_run == cronlib.Cron(
        "30 9 * * 1-5", "UTC"
    ).next_after(timezone.now())


def test_pause_one_time_then_resume(user: Any) -> None:
    task = one_time(user)
    task_pause(task=task)
    assert periodic_of(task).enabled is False
    assert periodic_of(task).one_off is True
    task_resume(task=task)
    assert periodic_of(task).enabled is True
    assert ScheduledTask.objects.get(pk=task.pk).next_run == task.run_at


def test_delete_removes_periodic_task_but_keeps_schedules(user: Any) -> None:
    rec = recurring(user)
    once = one_time(user)
    crontab_id = periodic_of(rec).crontab_id
    clocked_id = periodic_of(once).clocked_id
    task_delete(task=rec)
    task_delete(task=once)
    assert PeriodicTask.objects.count() == 0
    assert CrontabSchedule.objects.filter(pk=crontab_id).exists()
    assert ClockedSchedule.objects.filter(pk=clocked_id).exists()


def test_queryset_delete_also_removes_periodic_tasks(user: Any) -> None:
    recurring(user)
    one_time(user)
    keep = recurring(user, cron="0 0 * * *")
    ScheduledTask.objects.exclude(pk=keep.pk).delete()
    assert list(PeriodicTask.objects.values_list("pk", flat=True)) == [keep.periodic_task_id]


def test_tasks_share_one_crontab_row(user: Any) -> None:
    first = recurring(user, cron="0 6 * * *", tz="Asia/Tokyo")
    second = recurring(user, cron="0 6 * * *", tz="Asia/Tokyo")
    other_zone = recurring(user, cron="0 6 * * *", tz="UTC")
    assert periodic_of(first).pk != periodic_of(second).pk
    assert periodic_of(first).crontab_id == periodic_of(second).crontab_id
    assert periodic_of(other_zone).crontab_id != periodic_of(first).crontab_id
    assert CrontabSchedule.objects.filter(minute="0", hour="6").count() == 2
    task_delete(task=first)
    assert PeriodicTask.objects.get(pk=second.periodic_task_id).crontab_id is not None


def test_tasks_share_one_clocked_row(user: Any) -> None:
    at = datetime(2098, 1, 1, tzinfo=UTC)
    a, b = one_time(user, run_at=at), one_time(user, run_at=at)
    assert periodic_of(a).clocked_id == periodic_of(b).clocked_id
    assert ClockedSchedule.objects.count() == 1


def test_changing_cron_updates_the_same_periodic_task(user: Any) -> None:
    task = recurring(user, cron="0 8 * * *")
    before = periodic_of(task)
    task_update(task=task, cron="45 17 * * 5", timezone="America/New_York")
    after = periodic_of(task)
    assert after.pk == before.pk
    assert after.crontab_id != before.crontab_id
    assert (after.crontab.minute, after.crontab.hour, after.crontab.day_of_week) == (
        "45",
        "17",
        "5",
    )
    assert str(after.crontab.timezone) == "America/New_York"
    assert PeriodicTask.objects.count() == 1


def test_changing_type_updates_the_same_periodic_task(user: Any) -> None:
    task = recurring(user)
    before = periodic_of(task)
    at = datetime(2097, 7, 7, 7, 7, tzinfo=UTC)
    task_update(task=task, type="one-time", cron="", run_at=at)
    as_one_time = periodic_of(task)
    assert as_one_time.pk == before.pk
    assert as_one_time.crontab is None
    assert as_one_time.clocked.clocked_time == at
    assert as_one_time.one_off is True
    assert ScheduledTask.objects.get(pk=task.pk).next_run == at

    task_update(task=task, type="recurring", run_at=None, cron="0 0 1 * *")
    as_recurring = periodic_of(task)
    assert as_recurring.pk == before.pk
    assert as_recurring.clocked is None
    assert as_recurring.one_off is False
    assert as_recurring.crontab.day_of_month == "1"

    task_update(task=task, type="trigger", cron="", trigger={"type": "webhook"})
    task.refresh_from_db()
    assert task.periodic_task_id is None
    assert task.next_run is None
    assert PeriodicTask.objects.count() == 0

    task_update(task=task, type="recurring", trigger=None, cron="5 4 * * *")
    again = periodic_of(task)
    assert again.crontab.minute == "5"
    assert PeriodicTask.objects.count() == 1


def test_renaming_updates_the_description_only(user: Any) -> None:
    task = recurring(user)
    before = periodic_of(task)
    task_update(task=task, name="new name")
    after = periodic_of(task)
    assert after.description == "new name"
    assert (after.pk, after.crontab_id, after.last_run_at) == (
        before.pk,
        before.crontab_id,
        before.last_run_at,
    )


def test_plain_orm_create_gets_its_beat_row(user: Any) -> None:
    task = ScheduledTask.objects.create(
        owner=user, name="orm", type="recurring", cron="*/10 * * * *", action=WEBHOOK
    )
    periodic = periodic_of(task)
    assert periodic.task == RUN_TASK_NAME
    assert json.loads(periodic.kwargs) == {"task_id": str(task.id)}
    assert periodic.crontab.minute == "*/10"
    assert str(periodic.crontab.timezone) == "UTC"

    at = timezone.now() + timedelta(minutes=3)
    orm_once = ScheduledTask.objects.create(
        owner=user, name="orm once", type="one-time", run_at=at, action=WEBHOOK
    )
    assert periodic_of(orm_once).clocked.clocked_time == at
    assert ScheduledTask.objects.get(pk=orm_once.pk).next_run == at


def test_plain_orm_status_change_is_synced(user: Any) -> None:
    task = recurring(user)
    task.status = TaskStatus.PAUSED
    task.save()
    assert periodic_of(task).enabled is False
    task.status = TaskStatus.COMPLETED
    task.save(update_fields=["status"])
    task.refresh_from_db()
    assert task.periodic_task_id is None
    assert PeriodicTask.objects.count() == 0


def test_saving_unrelated_fields_does_not_touch_beat(user: Any) -> None:
    task = recurring(user)
    before = PeriodicTasks.last_change()
    task.run_count = 7
    task.save(update_fields=["run_count"])
    assert PeriodicTasks.last_change() == before


def test_exception_in_the_same_transaction_rolls_back_both(user: Any) -> None:
    with pytest.raises(RuntimeError, match="boom"), transaction.atomic():
        recurring(user)
        one_time(user)
        assert PeriodicTask.objects.count() == 2
        raise RuntimeError("boom")
    assert ScheduledTask.objects.count() == 0
    assert PeriodicTask.objects.count() == 0


def test_plain_orm_save_is_validated_and_stores_nothing_when_invalid(user: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        ScheduledTask.objects.create(
            owner=user, name="broken", type="recurring", cron="every minute", action=WEBHOOK
        )
    assert list(caught.value.message_dict) == ["schedule.cron"]
    assert ScheduledTask.objects.count() == 0
    assert PeriodicTask.objects.count() == 0


def test_update_rolled_back_with_its_transaction(user: Any) -> None:
    task = recurring(user, cron="0 8 * * *")
    crontab_id = periodic_of(task).crontab_id
    with pytest.raises(RuntimeError), transaction.atomic():
        task_update(task=task, cron="0 20 * * *")
        task_pause(task=task)
        raise RuntimeError
    stored = ScheduledTask.objects.get(pk=task.pk)
    assert (stored.cron, stored.status) == ("0 8 * * *", TaskStatus.ACTIVE)
    periodic = PeriodicTask.objects.get(pk=stored.periodic_task_id)
    assert (periodic.crontab_id, periodic.enabled) == (crontab_id, True)


def test_next_run_recurring_is_the_next_cron_time_in_its_zone(user: Any) -> None:
    before = timezone.now()
    task = recurring(user, cron="0 9 * * *", tz="Asia/Tokyo")
    stored = ScheduledTask.objects.get(pk=task.pk)
    assert stored.next_run == next_daily(before, 9, 0, "Asia/Tokyo")
    assert stored.next_run.astimezone(ZoneInfo("Asia/Tokyo")).hour == 9
    assert stored.next_run.hour == 0  # 09:00 JST is 00:00 UTC


def test_next_run_follows_dst_in_the_tasks_zone(user: Any) -> None:
    task = recurring(user, cron="0 9 * * *", tz="Europe/Paris")
    summer = datetime(2030, 7, 1, 12, tzinfo=UTC)
    winter = datetime(2030, 1, 1, 12, tzinfo=UTC)
    assert compute_next_run(task, now=summer) == datetime(2030, 7, 2, 7, tzinfo=UTC)
    assert compute_next_run(task, now=winter) == datetime(2030, 1, 2, 8, tzinfo=UTC)


def test_next_run_one_time_paused_and_trigger(user: Any) -> None:
    at = datetime(2096, 2, 2, 2, 2, tzinfo=UTC)
    once = one_time(user, run_at=at)
    assert ScheduledTask.objects.get(pk=once.pk).next_run == at
    task_pause(task=once)
    assert ScheduledTask.objects.get(pk=once.pk).next_run is None
    rec = recurring(user)
    task_pause(task=rec)
    assert ScheduledTask.objects.get(pk=rec.pk).next_run is None
    assert ScheduledTask.objects.get(pk=trigger(user).pk).next_run is None


def test_completed_one_time_task_loses_its_beat_row(user: Any) -> None:
    task = one_time(user)
    task.status = TaskStatus.COMPLETED
    task.save(update_fields=["status", "updated_at"])
    task.refresh_from_db()
    assert task.periodic_task_id is None
    assert task.next_run is None
    assert PeriodicTask.objects.count() == 0
    # Rescheduling re-arms it with a fresh beat row.
    later = timezone.now() + timedelta(days=3)
    task_update(task=task, run_at=later)
    assert periodic_of(task).clocked.clocked_time == later
    assert periodic_of(task).enabled is True


def test_schedule_sync_is_idempotent(user: Any) -> None:
    task = recurring(user)
    first = periodic_of(task)
    schedule_sync(task=task)
    schedule_sync(task=task)
    assert PeriodicTask.objects.count() == 1
    again = periodic_of(task)
    assert (again.pk, again.crontab_id, again.last_run_at) == (
        first.pk,
        first.crontab_id,
        first.last_run_at,
    )
    assert CrontabSchedule.objects.count() == 1


def test_last_change_advances_on_every_change(user: Any) -> None:
    seen = [PeriodicTasks.last_change()]

    def advanced() -> bool:
        current = PeriodicTasks.last_change()
        moved = current is not None and (seen[-1] is None or current > seen[-1])
        seen.append(current)
        return moved

    task = recurring(user)
    assert advanced()
    task_pause(task=task)
    assert advanced()
    task_resume(task=task)
    assert advanced()
    task_update(task=task, cron="1 1 * * *")
    assert advanced()
    task_delete(task=task)
    assert advanced()


def test_beat_row_deleted_by_hand_is_recreated_on_next_change(user: Any) -> None:
    task = recurring(user, cron="0 7 * * *")
    PeriodicTask.objects.filter(pk=task.periodic_task_id).delete()  # e.g. in the beat admin
    task.refresh_from_db()
    assert task.periodic_task_id is None  # SET_NULL, the task survives
    task_update(task=task, description="touch")
    periodic = periodic_of(task)
    assert periodic.name == f"scheduled-task:{task.id}"
    assert periodic.crontab.hour == "7"
    assert PeriodicTask.objects.count() == 1
