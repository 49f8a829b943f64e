"""Keep beat rows (and email-trigger mailboxes) in step with task definitions however a
task is saved (service, admin or plain ORM), inside the saving transaction
(ScheduledTask.save is atomic)."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from .models import ScheduledTask
from .services.schedules import schedule_remove, schedule_sync

SCHEDULE_FIELDS = frozenset({"type", "cron", "timezone", "run_at", "status", "name"})


@receiver(post_save, sender=ScheduledTask, dispatch_uid="tasks_app.sync_schedule")
def _sync_schedule(
    sender: type,
    instance: ScheduledTask,
    update_fields: Any = None,
    raw: bool = False,
    **kwargs: Any,
) -> None:
    if raw:
        return
    if update_fields is None or SCHEDULE_FIELDS & set(update_fields):
        schedule_sync(task=instance)
    if update_fields is None or "trigger" in update_fields or "type" in update_fields:
        from .services.inbound_email import mailbox_ensure  # (imports the executors)

        mailbox_ensure(task=instance)  # an email trigger gets its address with the task


@receiver(post_delete, sender=ScheduledTask, dispatch_uid="tasks_app.remove_schedule")
def _remove_schedule(sender: type, instance: ScheduledTask, **kwargs: Any) -> None:
    schedule_remove(task=instance)
