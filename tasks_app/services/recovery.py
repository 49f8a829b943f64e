"""Re-publish executions whose message or worker was lost.

Runs every SCHEDULER_RECOVERY_INTERVAL seconds (a beat entry). A running execution
whose lease ran out is re-run by whoever claims it next (the claim counts deliveries and
gives up past SCHEDULER_MAX_DELIVERIES); a queued or retrying one that nobody started
long after it was due is published again; a chain is published again from its current
step. Duplicate messages are harmless: claims drop them.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from ..conf import scheduler_settings
from ..models import ExecutionStatus, TaskExecution
from .chains import chain_publish
from .dispatch import execution_publish
from .occurrences import waiting_release

BATCH = 500


def executions_recover() -> int:
    now = timezone.now()
    stale = now - timedelta(seconds=scheduler_settings().requeue_after)
    lost_worker = Q(status=ExecutionStatus.RUNNING, lease_expires_at__lte=now) & (
        Q(last_sent__lt=F("lease_expires_at")) | Q(last_sent__lte=stale)
    )
    never_started = (
        Q(status=ExecutionStatus.QUEUED, held=False, last_sent__lte=stale)
        # a jittered first attempt is not due before its start
        & (Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=stale))
    )
    retry_lost = Q(
        status=ExecutionStatus.RETRYING, next_attempt_at__lte=stale, last_sent__lte=stale
    )
    count = 0
    with transaction.atomic():
        candidates = (
            TaskExecution.objects.annotate(last_sent=Coalesce("enqueued_at", "queued_at"))
            .filter(lost_worker | never_started | retry_lost)
            .only("pk", "status", "attempt", "current_step", "steps")[:BATCH]
        )
        for execution in candidates:
            if execution.current_step is not None:
                chain_publish(execution=execution)
                count += 1
                continue
            attempt = (
                execution.attempt
                if execution.status == ExecutionStatus.RUNNING
                else execution.attempt + 1
            )
            execution_publish(execution=execution, attempt=attempt)
            count += 1
    return count + _release_stranded(stale)


def _release_stranded(stale: datetime) -> int:
    """Held runs whose task has nothing running any more (the finishing worker died
    before it could release them) are released."""
    tasks = (
        TaskExecution.objects.filter(held=True, status=ExecutionStatus.QUEUED, queued_at__lte=stale)
        .values_list("task_id", flat=True)
        .distinct()[:BATCH]
    )
    released = 0
    for task_id in list(tasks):
        with transaction.atomic():
            released += waiting_release(task_id=task_id) is not None
    return released
