"""Task definitions, their executions and their inbound webhooks (the guide's tables)."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import models, transaction
from django.db.models import Q
from django_celery_beat.models import PeriodicTask

from . import sealed
from .fields import EncryptedJSONField, EncryptedTextField


class TaskType(models.TextChoices):
    ONE_TIME = "one-time", "One-time"
    RECURRING = "recurring", "Recurring"
    TRIGGER = "trigger", "Trigger"


class TaskStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    PAUSED = "paused", "Paused"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"


class TriggerType(models.TextChoices):
    WEBHOOK = "webhook", "Webhook"
    EMAIL = "email", "Email"
    EVENT = "event", "Event"


class ActionType(models.TextChoices):
    AI_PROMPT = "ai-prompt", "AI prompt"
    SEND_EMAIL = "send-email", "Send email"
    WEBHOOK = "webhook", "Webhook"
    RUN_CODE = "run-code", "Run code"
    GENERATE_REPORT = "generate-report", "Generate report"
    WEB_SCRAPE = "web-scrape", "Web scrape"
    CHAIN = "chain", "Chain"
    FILE_OPERATION = "file-operation", "File operation"
    GOOGLE_WORKSPACE = "google-workspace", "Google Workspace"


class ExecutionStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    SKIPPED = "skipped", "Skipped"
    RETRYING = "retrying", "Retrying"


class MisfirePolicy(models.TextChoices):
    """What happens to occurrences that could not fire on time (the scheduler was down)."""

    SKIP = "skip", "Skip missed runs"
    RUN_ONCE = "runOnce", "Run the latest missed once"
    RUN_ALL = "runAll", "Run every missed (within the catch-up window)"


class OverlapPolicy(models.TextChoices):
    """What an occurrence does while an earlier run of the task is still going."""

    SKIP = "skip", "Skip it"
    QUEUE = "queue", "Queue it (at most one waiting)"
    ALLOW = "allow", "Run it alongside"


class ExecutionTrigger(models.TextChoices):
    SCHEDULED = "scheduled", "Scheduled"
    MANUAL = "manual", "Run now"
    WEBHOOK = "webhook", "Webhook"
    EMAIL = "email", "Email"
    EVENT = "event", "Event"


# The schedule's controls (schedule.misfirePolicy etc. in the API), in form order.
SCHEDULE_CONTROL_FIELDS = (
    "misfire_policy",
    "catchup_window_seconds",
    "overlap_policy",
    "jitter_seconds",
    "start_at",
    "end_at",
    "grace_seconds",
)
# The fields a user edits, in form order; saving any of them (or status/owner) validates.
EDITABLE_FIELDS = (
    "name",
    "description",
    "type",
    "cron",
    "timezone",
    "run_at",
    "trigger",
    "action",
    "conditions",
    "retry_policy",
    "notification",
    *SCHEDULE_CONTROL_FIELDS,
)
DEFINITION_FIELDS = frozenset({*EDITABLE_FIELDS, "owner"})
# Written by the runtime with conditional updates, never by a full save of a stale object.
RUNTIME_FIELDS = frozenset(
    {"last_run", "next_run", "run_count", "periodic_task", "paused_at", "late_since"}
)


# The guide's JSON names of the editable parts of a task, and their model fields.
JSON_FIELDS = {
    "name": "name",
    "description": "description",
    "type": "type",
    "trigger": "trigger",
    "action": "action",
    "conditions": "conditions",
    "retryPolicy": "retry_policy",
    "notification": "notification",
}
PATH_FIELDS = {**JSON_FIELDS, "status": "status"}
SCHEDULE_PATH_FIELDS = {
    "schedule.cron": "cron",
    "schedule.timezone": "timezone",
    "schedule.at": "run_at",
    "schedule.misfirePolicy": "misfire_policy",
    "schedule.catchupWindowSeconds": "catchup_window_seconds",
    "schedule.overlapPolicy": "overlap_policy",
    "schedule.jitterSeconds": "jitter_seconds",
    "schedule.startAt": "start_at",
    "schedule.endAt": "end_at",
    "schedule.graceSeconds": "grace_seconds",
}


class ScheduledTask(models.Model):
    """What to run and when; beat rows are derived from it by services.schedules."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="scheduled_tasks"
    )
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, default="")
    type = models.CharField(max_length=16, choices=TaskType.choices)
    cron = models.CharField(
        max_length=120, blank=True, default="", help_text="5-field cron, recurring tasks only"
    )
    timezone = models.CharField(max_length=64, default="UTC", help_text="IANA timezone name")
    run_at = models.DateTimeField(null=True, blank=True, help_text="When a one-time task runs")
    trigger = models.JSONField(null=True, blank=True, help_text='{"type": "webhook", "config": {}}')
    #: The event an event-triggered task listens to ("" otherwise), kept from ``trigger`` by
    #: save(): what an emitted event (and every finished run's task.completed / task.failed)
    #: looks up, by index.
    listens_for = models.CharField(max_length=100, blank=True, default="", editable=False)
    action = models.JSONField()
    conditions = models.JSONField(default=list, blank=True)
    retry_policy = models.JSONField(default=dict, blank=True)
    notification = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=TaskStatus.choices, default=TaskStatus.ACTIVE)
    pause_reason = models.CharField(
        max_length=500, blank=True, default="", help_text="Why the task was paused"
    )
    misfire_policy = models.CharField(
        max_length=8, choices=MisfirePolicy.choices, default=MisfirePolicy.RUN_ONCE
    )
    catchup_window_seconds = models.PositiveIntegerField(
        default=3600, help_text="runAll: how far back missed occurrences still run"
    )
    overlap_policy = models.CharField(
        max_length=8, choices=OverlapPolicy.choices, default=OverlapPolicy.SKIP
    )
    jitter_seconds = models.PositiveIntegerField(
        default=0, help_text="Start each run up to this many seconds after its time"
    )
    start_at = models.DateTimeField(null=True, blank=True, help_text="No runs before this")
    end_at = models.DateTimeField(null=True, blank=True, help_text="No runs after this")
    grace_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Late (dead-man's switch) when a run has not started this long after its "
        "time; empty: SCHEDULER_LATE_AFTER_SECONDS",
    )
    paused_at = models.DateTimeField(null=True, blank=True, editable=False)
    late_since = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="The occurrence found late"
    )
    last_run = models.DateTimeField(null=True, blank=True)
    next_run = models.DateTimeField(null=True, blank=True)
    run_count = models.PositiveIntegerField(default=0)
    periodic_task = models.OneToOneField(
        PeriodicTask,
        null=True,
        blank=True,
        editable=False,
        on_delete=models.SET_NULL,
        related_name="scheduled_task",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "scheduled_tasks"
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["owner", "status"], name="scheduled_owner_status"),
            # GET /api/tasks: a user's tasks newest first, a page at a time
            models.Index(fields=["owner", "-created_at", "id"], name="scheduled_owner_recent"),
            # Late tasks (stats, health): the smallest graceSeconds set among a user's tasks
            models.Index(
                fields=["owner", "grace_seconds"],
                condition=Q(grace_seconds__isnull=False),
                name="scheduled_owner_grace",
            ),
            models.Index(fields=["status", "next_run"], name="scheduled_status_next_run"),
            # event_emit: an owner's tasks listening to one event
            models.Index(
                fields=["owner", "listens_for"],
                condition=~Q(listens_for=""),
                name="scheduled_owner_listens_for",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(type__in=TaskType.values), name="scheduled_task_type_valid"
            ),
            models.CheckConstraint(
                condition=Q(status__in=TaskStatus.values), name="scheduled_task_status_valid"
            ),
            models.CheckConstraint(
                condition=~Q(type=TaskType.ONE_TIME) | Q(run_at__isnull=False),
                name="one_time_task_has_run_at",
            ),
            models.CheckConstraint(
                condition=~Q(type=TaskType.RECURRING) | ~Q(cron=""),
                name="recurring_task_has_cron",
            ),
            models.CheckConstraint(
                condition=~Q(type=TaskType.TRIGGER) | Q(trigger__isnull=False),
                name="trigger_task_has_trigger",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def action_type(self) -> str:
        return (self.action or {}).get("type", "")

    def clean(self) -> None:
        """Validate the definition; errors are keyed by model field for forms."""
        from .validation import validate_task

        try:
            validate_task(self)
        except ValidationError as exc:
            by_field: dict[str, list[str]] = {}
            for path, messages in exc.message_dict.items():
                field = PATH_FIELDS.get(path.split(".")[0].split("[")[0], NON_FIELD_ERRORS)
                if path.startswith("schedule."):
                    field = SCHEDULE_PATH_FIELDS.get(path, "cron")
                by_field.setdefault(field, []).extend(f"{path}: {m}" for m in messages)
            raise ValidationError(by_field) from None

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Validate the definition (whoever saves: service, admin or plain ORM), then save.

        A full save of an existing task leaves the runtime fields alone (a worker may have
        moved them since this object was read). Atomic so that the beat row (synced by a
        post_save receiver) and the definition change commit or roll back together.
        """
        from .validation import validate_task

        update_fields = kwargs.get("update_fields")
        if update_fields is None and not self._state.adding:
            kwargs["update_fields"] = update_fields = [
                f.name
                for f in self._meta.concrete_fields
                if not f.primary_key and f.name not in RUNTIME_FIELDS
            ]
        if update_fields is not None and "updated_at" not in update_fields:
            # every save moves updated_at: a finishing run tells by it whether the task
            # it read has changed since (the runtime's own writes are update()s)
            kwargs["update_fields"] = update_fields = [*update_fields, "updated_at"]
        if update_fields is None or DEFINITION_FIELDS & set(update_fields):
            validate_task(self)
        if update_fields is None or {"trigger", "type"} & set(update_fields):
            self.listens_for = listened_event(self.type, self.trigger)
            if update_fields is not None:
                kwargs["update_fields"] = [*update_fields, "listens_for"]
        if (update_fields is None or "action" in update_fields) and sealed.has_secrets(self.action):
            stored = None
            if not self._state.adding and sealed.MASK in str(self.action):
                stored = (
                    type(self)
                    ._base_manager.filter(pk=self.pk)
                    .values_list("action", flat=True)
                    .first()
                )
            self.action = sealed.seal(self.action, stored)
        with transaction.atomic(using=kwargs.get("using")):
            super().save(*args, **kwargs)


def listened_event(task_type: str, trigger: Any) -> str:
    """The event name a task of this type and trigger listens to, or ""."""
    if task_type != TaskType.TRIGGER or not isinstance(trigger, dict):
        return ""
    config = trigger.get("config")
    event = config.get("event") if isinstance(config, dict) else None
    return event if trigger.get("type") == TriggerType.EVENT and isinstance(event, str) else ""


class TaskExecution(models.Model):
    """One run of a task: a scheduled occurrence, a manual run or a trigger."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    #: No index of its own: the (task, -queued_at) index serves lookups by task, and every
    #: index is written again by each of a run's two updates.
    task = models.ForeignKey(
        ScheduledTask, on_delete=models.CASCADE, related_name="executions", db_index=False
    )
    status = models.CharField(
        max_length=16, choices=ExecutionStatus.choices, default=ExecutionStatus.QUEUED
    )
    trigger = models.CharField(max_length=16, choices=ExecutionTrigger.choices)
    scheduled_for = models.DateTimeField(
        null=True, blank=True, help_text="Nominal occurrence (UTC) for scheduled fires"
    )
    payload = models.JSONField(null=True, blank=True, help_text="Trigger input for the action")
    queued_at = models.DateTimeField(auto_now_add=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveBigIntegerField(null=True, blank=True)
    attempt = models.PositiveIntegerField(default=0, help_text="Attempts started (retries + 1)")
    deliveries = models.PositiveIntegerField(
        default=0, help_text="Times a worker started the current attempt"
    )
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=255, blank=True, default="", help_text="host:pid")
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    logs = models.JSONField(default=list, blank=True)
    steps = models.JSONField(
        default=list, blank=True, help_text="Chains: one entry per step (status, result, timing)"
    )
    current_step = models.PositiveIntegerField(
        null=True, blank=True, help_text="Chains: the step now running or due next"
    )
    input_tokens = models.PositiveBigIntegerField(default=0, help_text="Claude tokens in")
    output_tokens = models.PositiveBigIntegerField(default=0, help_text="Claude tokens out")
    notified_at = models.DateTimeField(null=True, blank=True)
    trigger_depth = models.PositiveSmallIntegerField(
        default=0, help_text="How many triggers led here (loop protection)"
    )
    held = models.BooleanField(
        default=False,
        help_text="Waiting for the task's earlier run to finish (overlap queue, catch-up)",
    )

    class Meta:
        db_table = "task_executions"
        ordering = ["-queued_at"]
        indexes = [
            models.Index(fields=["task", "-queued_at"], name="execution_task_recent"),
            # GET /api/stats: the last day's executions, whatever the history's size
            models.Index(fields=["queued_at"], name="execution_queued_at"),
            models.Index(fields=["status", "lease_expires_at"], name="execution_status_lease"),
            # "Is a run of this task still going?" (overlap policy, dead-man's switch)
            models.Index(
                fields=["task", "status"],
                condition=Q(status__in=["queued", "running", "retrying"]),
                name="execution_unfinished",
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["task", "scheduled_for"],
                condition=Q(trigger=ExecutionTrigger.SCHEDULED),
                name="one_execution_per_occurrence",
            ),
            models.CheckConstraint(
                condition=~Q(trigger=ExecutionTrigger.SCHEDULED) | Q(scheduled_for__isnull=False),
                name="scheduled_execution_has_occurrence",
            ),
            models.CheckConstraint(
                condition=Q(status__in=ExecutionStatus.values), name="execution_status_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_id} {self.trigger} {self.status}"

    @property
    def is_finished(self) -> bool:
        return self.status in {
            ExecutionStatus.COMPLETED,
            ExecutionStatus.FAILED,
            ExecutionStatus.SKIPPED,
        }


class TaskWebhook(models.Model):
    """An inbound webhook URL that starts a trigger task."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    task = models.ForeignKey(ScheduledTask, on_delete=models.CASCADE, related_name="webhooks")
    webhook_id = models.CharField(max_length=64, unique=True)
    secret = EncryptedTextField(help_text="Encrypted at rest; shown once when made")
    previous_secret = EncryptedTextField(null=True, blank=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    require_signature = models.BooleanField(
        default=False, help_text="Accept only Standard Webhooks signatures, not a bare secret"
    )
    active = models.BooleanField(default=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "task_webhooks"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.webhook_id


class WebhookDelivery(models.Model):
    """A ``webhook-id`` already seen on a webhook: a replay answers as the first did."""

    webhook = models.ForeignKey(TaskWebhook, on_delete=models.CASCADE, related_name="deliveries")
    delivery_id = models.CharField(max_length=255)
    execution = models.ForeignKey(
        TaskExecution, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    status_code = models.PositiveSmallIntegerField(default=202)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "webhook_deliveries"
        constraints = [
            models.UniqueConstraint(fields=["webhook", "delivery_id"], name="one_delivery_per_id")
        ]
        indexes = [models.Index(fields=["received_at"], name="delivery_received")]

    def __str__(self) -> str:
        return self.delivery_id


class TaskMailbox(models.Model):
    """The inbound e-mail address of an email-triggered task: <local_part>@<domain>."""

    task = models.OneToOneField(ScheduledTask, on_delete=models.CASCADE, related_name="mailbox")
    local_part = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "task_mailboxes"

    def __str__(self) -> str:
        return self.local_part


class UserVariable(models.Model):
    """A named value per user, read by ``variable`` conditions."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="task_variables"
    )
    name = models.CharField(max_length=100)
    value = models.JSONField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "user_variables"
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="one_variable_per_name")
        ]

    def __str__(self) -> str:
        return self.name


class PushSubscription(models.Model):
    """A browser's Web Push subscription (endpoint and keys), for push notifications."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="push_subscriptions"
    )
    endpoint = models.URLField(max_length=2048)
    p256dh = models.CharField(max_length=200)
    auth = models.CharField(max_length=100)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "push_subscriptions"
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "endpoint"], name="one_subscription_per_endpoint"
            )
        ]

    def __str__(self) -> str:
        return self.endpoint


class GoogleCredential(models.Model):
    """A user's Google credentials (service account or authorized user), encrypted at rest."""

    owner = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="google_credential"
    )
    credentials = EncryptedJSONField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "google_credentials"

    def __str__(self) -> str:
        return f"Google credentials of {self.owner_id}"


class Report(models.Model):
    """A report made by a generate-report action, downloadable as HTML or Markdown."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="task_reports"
    )
    task = models.ForeignKey(
        ScheduledTask, on_delete=models.SET_NULL, null=True, blank=True, related_name="reports"
    )
    execution = models.ForeignKey(
        TaskExecution, on_delete=models.SET_NULL, null=True, blank=True, related_name="reports"
    )
    title = models.CharField(max_length=200)
    html = models.TextField()
    markdown = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "reports"
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "-created_at"], name="report_owner_recent")]

    def __str__(self) -> str:
        return self.title


class CalendarFeed(models.Model):
    """A user's secret iCal feed URL (GET /calendar/<token>.ics): only the token's SHA-256
    is kept, so the URL is shown once, when it is made or regenerated."""

    owner = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="calendar_feed"
    )
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "calendar_feeds"

    def __str__(self) -> str:
        return f"Calendar feed of {self.owner_id}"
