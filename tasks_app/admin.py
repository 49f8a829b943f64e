"""Operators' admin (staff): tasks with readable schedules, their next runs and last
outcome; executions with their logs, chain steps and result. Saving a task goes through
the model's validation and the definition services; the beat rows it produces show under
"Periodic tasks" (django-celery-beat's admin).

Secrets never reach the admin's HTML: secret-looking header values, URL query values and
credentials (``masked``) show as ``sealed.MASK``; the JSON fields of the task form show
them masked too, and a value sent back as the mask keeps the stored one (``unmasked``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import cache, lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from cron_descriptor import FormatException, MissingFieldException, WrongArgumentException
from django import forms
from django.contrib import admin, messages
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import models
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django_celery_beat.admin import PeriodicTaskAdmin as BeatPeriodicTaskAdmin
from django_celery_beat.models import PeriodicTask

from . import cron as cronlib
from . import selectors
from .conf import BEAT_ENTRY_PREFIX
from .models import (
    EDITABLE_FIELDS,
    SCHEDULE_CONTROL_FIELDS,
    ActionType,
    ExecutionStatus,
    ScheduledTask,
    TaskExecution,
    TaskType,
    TaskWebhook,
)
from .sealed import MASK, mask_text, unmasked
from .sealed import masked_for_display as masked
from .services import definitions, dispatch
from .services.lateness import LateTask, tasks_late

JSON_FORM_FIELDS = ("trigger", "action", "conditions", "retry_policy", "notification")
CRON_DESCRIPTOR_ERRORS = (FormatException, MissingFieldException, WrongArgumentException)
NEXT_RUNS = 10
#: Read-only on the task page, in its "Runtime" fieldset.
RUNTIME_FIELDS = (
    "status",
    "pause_reason",
    "last_run",
    "next_run",
    "run_count",
    "late_since",
    "beat_entry",
    "created_at",
    "updated_at",
    "history",
)
LATEST_EXECUTIONS = 20
EXCERPT_CHARS = 200
BADGE_COLOURS: dict[str, str] = {
    ExecutionStatus.COMPLETED: "#2e7d32",
    ExecutionStatus.FAILED: "#c62828",
    ExecutionStatus.RUNNING: "#1565c0",
    ExecutionStatus.RETRYING: "#ef6c00",
    ExecutionStatus.QUEUED: "#6d4c41",
    ExecutionStatus.SKIPPED: "#757575",
}


def pretty_json(value: Any) -> SafeString:
    text = json.dumps(masked(value), indent=2, ensure_ascii=False, default=str)
    return format_html('<pre style="white-space: pre-wrap; margin: 0">{}</pre>', text)


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        text = mask_text(value)
    else:
        text = json.dumps(masked(value), ensure_ascii=False, default=str)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


# --- readable values ----------------------------------------------------------------------


@lru_cache(maxsize=1024)
def cron_text(expression: str, zone: str) -> str:
    try:
        return selectors.describe_cron(cronlib.parse(expression, zone).expression, zone)
    except (ValueError, KeyError, *CRON_DESCRIPTOR_ERRORS):
        return f"{expression} ({zone})"


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError):
        return ZoneInfo("UTC")


def schedule_text(task: ScheduledTask) -> str:
    """ "At 09:00 AM, Monday through Friday (America/New_York)", "Once, at 2026-12-01
    09:00 (Europe/Paris)", "On webhook", "On event invoice.paid"."""
    if task.type == TaskType.RECURRING:
        return cron_text(task.cron, task.timezone)
    if task.type == TaskType.ONE_TIME:
        if task.run_at is None:
            return "-"
        local = task.run_at.astimezone(_zone(task.timezone))
        return f"Once, at {local:%Y-%m-%d %H:%M} ({task.timezone})"
    trigger: dict[str, Any] = task.trigger if isinstance(task.trigger, dict) else {}
    kind = trigger.get("type") or "trigger"
    if kind == "event":
        config: dict[str, Any] = (
            trigger["config"] if isinstance(trigger.get("config"), dict) else {}
        )
        return f"On event {config.get('event', '?')}"
    return f"On {kind}"


def badge(status: str | None) -> str:
    if not status:
        return "-"
    label = ExecutionStatus(status).label if status in ExecutionStatus.values else status
    return format_html(
        '<span class="outcome outcome-{}" style="background: {}; color: #fff; padding: 1px 7px;'
        ' border-radius: 9px; white-space: nowrap">{}</span>',
        status,
        BADGE_COLOURS.get(status, "#555"),
        label,
    )


def duration_text(ms: int | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms} ms"
    minutes, seconds = divmod(ms / 1000, 60)
    return f"{int(minutes)} min {seconds:.0f} s" if minutes else f"{seconds:.1f} s"


def _when(value: Any) -> str:
    try:
        return f"{datetime.fromisoformat(str(value)):%a %Y-%m-%d %H:%M %z}"
    except ValueError:
        return str(value)


def late_label(entry: LateTask | None, task: ScheduledTask) -> str:
    """The "late" column: "late since 2024-05-01 09:00 UTC", from the start of the episode
    when the periodic check has recorded it (``late_since``)."""
    if entry is None:
        return "-"
    since = min(entry.occurrence, task.late_since or entry.occurrence).astimezone(UTC)
    return f"late since {since:%Y-%m-%d %H:%M} UTC"


# --- operators -----------------------------------------------------------------------------


class OperatorAdmin(admin.ModelAdmin):
    """Staff (operators) see every object, whoever owns it."""

    @staticmethod
    def _operator(request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.is_staff)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._operator(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._operator(request)


# --- tasks ---------------------------------------------------------------------------------


class PrettyJSONField(forms.JSONField):
    """A JSON textarea, indented."""

    widget = forms.Textarea(
        attrs={"rows": 12, "cols": 100, "style": "font-family: monospace", "spellcheck": "false"}
    )

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value
        return json.dumps(value, indent=2, ensure_ascii=False, cls=self.encoder)


class ScheduledTaskForm(forms.ModelForm):
    """The JSON fields are shown masked and a kept mask keeps the stored secret; the model's
    validation errors land on their fields; the API's "must be in the future" checks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            for name in JSON_FORM_FIELDS:
                if name in self.fields:
                    self.initial[name] = masked(getattr(self.instance, name))

    def _clean_json(self, name: str) -> Any:
        stored = getattr(self.instance, name) if self.instance.pk is not None else None
        value = unmasked(self.cleaned_data.get(name), stored)
        if MASK in json.dumps(value, ensure_ascii=False, default=str):
            raise ValidationError(
                f"{MASK} stands for a stored secret and is kept only where it was shown (same "
                "name, same destination host); type the secret itself here."
            )
        return value

    def clean_trigger(self) -> Any:
        return self._clean_json("trigger")

    def clean_action(self) -> Any:
        return self._clean_json("action")

    def clean_conditions(self) -> Any:
        return self._clean_json("conditions")

    def clean_retry_policy(self) -> Any:
        return self._clean_json("retry_policy")

    def clean_notification(self) -> Any:
        return self._clean_json("notification")

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        now, changed, adding = timezone.now(), set(self.changed_data), self.instance.pk is None
        run_at, end_at = data.get("run_at"), data.get("end_at")
        rescheduled = adding or {"run_at", "type"} & changed
        if data.get("type") == TaskType.ONE_TIME and run_at and run_at <= now and rescheduled:
            self.add_error("run_at", "schedule.at: must be in the future")
        if end_at and end_at <= now and (adding or "end_at" in changed):
            self.add_error("end_at", "schedule.endAt: must be in the future")
        return data

    def add_error(self, field: str | None, error: Any) -> None:
        """The model's errors on a field the form does not edit (status) go to the top of
        the form (instead of failing: the form has no such field)."""
        if field is None and isinstance(error, ValidationError) and hasattr(error, "error_dict"):
            by_field: dict[str, list[Any]] = {}
            for name, found in error.error_dict.items():
                target = name if name in self.fields else NON_FIELD_ERRORS
                by_field.setdefault(target, []).extend(found)
            error = ValidationError(by_field)
        super().add_error(field, error)


#: An execution's columns, in the task page's inline and in the executions list.
EXECUTION_COLUMNS = ("outcome", "trigger", "scheduled_for", "started_at", "duration", "attempt")


class ExecutionInline(admin.TabularInline):
    model = TaskExecution
    fields = (*EXECUTION_COLUMNS, "error_excerpt")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = True
    ordering = ("-queued_at",)
    verbose_name_plural = f"latest executions (at most {LATEST_EXECUTIONS}; all under History)"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        executions = super().get_queryset(request).defer("logs", "result", "payload", "steps")
        match = request.resolver_match
        try:
            task_id = uuid.UUID(str(match.kwargs.get("object_id"))) if match else None
        except ValueError:
            task_id = None
        if task_id is None:
            return executions
        latest = (
            TaskExecution.objects.filter(task_id=task_id)
            .order_by("-queued_at")
            .values("pk")[:LATEST_EXECUTIONS]
        )
        return executions.filter(pk__in=Subquery(latest))

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_active and request.user.is_staff)

    @admin.display(description="status")
    def outcome(self, execution: TaskExecution) -> str:
        return badge(execution.status)

    @admin.display(description="duration")
    def duration(self, execution: TaskExecution) -> str:
        return duration_text(execution.duration_ms)

    @admin.display(description="error")
    def error_excerpt(self, execution: TaskExecution) -> str:
        return excerpt(execution.error) or "-"


class LateFilter(admin.SimpleListFilter):
    """Late (dead-man's switch): computed live, so it also shows while beat is down."""

    title = "late"
    parameter_name = "late"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Late"), ("no", "Not late")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        if self.value() not in {"yes", "no"}:
            return None
        late = [entry.task.pk for entry in tasks_late()]
        return (
            queryset.filter(pk__in=late) if self.value() == "yes" else queryset.exclude(pk__in=late)
        )


class ActionTypeFilter(admin.SimpleListFilter):
    title = "action type"
    parameter_name = "action_type"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return list(ActionType.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        value = self.value()
        return queryset.filter(action__type=value) if value else None


@admin.register(ScheduledTask)
class ScheduledTaskAdmin(OperatorAdmin):
    form = ScheduledTaskForm
    formfield_overrides = {models.JSONField: {"form_class": PrettyJSONField}}
    list_display = (
        "name",
        "owner",
        "type",
        "action_type",
        "status",
        "schedule",
        "next_run",
        "last_run",
        "last_outcome",
    )
    list_filter = (
        "status",
        "type",
        ActionTypeFilter,
        ("owner", admin.RelatedOnlyFieldListFilter),
        LateFilter,
    )
    search_fields = ("name", "description", "owner__username")
    list_select_related = ("owner",)
    readonly_fields = ("next_runs", *RUNTIME_FIELDS)
    fieldsets = (
        ("Definition", {"fields": ("owner", "name", "description", "type")}),
        ("Schedule", {"fields": ("cron", "timezone", "run_at", "trigger", "next_runs")}),
        ("Schedule controls", {"fields": SCHEDULE_CONTROL_FIELDS}),
        ("Action", {"fields": ("action",)}),
        ("Policies", {"fields": ("conditions", "retry_policy", "notification")}),
        ("Runtime", {"fields": RUNTIME_FIELDS}),
    )
    inlines = [ExecutionInline]
    actions = ["pause", "resume", "run_now"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self._operator(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._operator(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._operator(request)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        latest = TaskExecution.objects.filter(task=OuterRef("pk")).order_by("-queued_at")
        return (
            super()
            .get_queryset(request)
            .annotate(latest_status=Subquery(latest.values("status")[:1]))
        )

    def get_list_display(self, request: HttpRequest) -> list[Any]:
        """The columns, and "late": one live lateness computation per page."""

        @cache
        def late_by_task() -> dict[Any, LateTask]:
            return {entry.task.pk: entry for entry in tasks_late()}

        @admin.display(description="late")
        def late(task: ScheduledTask) -> str:
            return late_label(late_by_task().get(task.pk), task)

        column: Callable[[ScheduledTask], str] = late
        return [*super().get_list_display(request), column]

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        return {"owner": request.user.pk, "timezone": "UTC"}

    def save_model(self, request: HttpRequest, obj: ScheduledTask, form: Any, change: bool) -> None:
        """An edit goes through ``task_update`` (rescheduling a finished one-time task
        re-arms it, as in the API)."""
        if not change:
            super().save_model(request, obj, form, change)
            return
        edited = {name: getattr(obj, name) for name in form.changed_data if name in EDITABLE_FIELDS}
        definitions.task_update(task=obj, **edited)

    def delete_model(self, request: HttpRequest, obj: ScheduledTask) -> None:
        definitions.task_delete(task=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ScheduledTask]) -> None:
        for task in queryset:
            definitions.task_delete(task=task)

    @admin.display(description="action type", ordering="action__type")
    def action_type(self, task: ScheduledTask) -> str:
        kind = task.action_type
        return ActionType(kind).label if kind in ActionType.values else kind or "-"

    @admin.display(description="schedule")
    def schedule(self, task: ScheduledTask) -> str:
        return schedule_text(task)

    @admin.display(description="last outcome", ordering="latest_status")
    def last_outcome(self, task: ScheduledTask) -> str:
        return badge(getattr(task, "latest_status", None))

    @admin.display(description="next runs")
    def next_runs(self, task: ScheduledTask) -> str:
        if task.pk is None or task._state.adding:
            return "Shown once the task is saved."
        try:
            preview = selectors.task_preview(task, count=NEXT_RUNS)
        except (ValueError, KeyError):
            return "-"
        runs = format_html_join(
            "",
            "<li>{}{}</li>",
            (
                (
                    _when(occurrence["at"]),
                    format_html(
                        ' <strong class="dst">DST {}</strong>: {}',
                        occurrence["dst"].get("kind", ""),
                        occurrence["dst"].get("note", ""),
                    )
                    if occurrence.get("dst")
                    else "",
                )
                for occurrence in preview["occurrences"]
            ),
        )
        remarks = [*preview.get("notes", []), *preview.get("warnings", [])]
        if preview.get("note"):
            remarks.append(f"no runs: {preview['note']}")
        return format_html(
            "<div>{}</div><ol>{}</ol>{}",
            preview["description"],
            runs,
            format_html_join("", "<p>{}</p>", ((remark,) for remark in remarks)),
        )

    @admin.display(description="beat entry")
    def beat_entry(self, task: ScheduledTask) -> str:
        if not task.periodic_task_id:
            return "-"
        url = reverse("admin:django_celery_beat_periodictask_change", args=[task.periodic_task_id])
        return format_html('<a href="{}">{}</a>', url, task.periodic_task)

    @admin.display(description="history")
    def history(self, task: ScheduledTask) -> str:
        if not task.pk:
            return "-"
        url = reverse("admin:tasks_app_taskexecution_changelist") + f"?task__id__exact={task.pk}"
        return format_html('<a href="{}">History</a>', url)

    @admin.action(description="Pause selected tasks")
    def pause(self, request: HttpRequest, queryset: QuerySet[ScheduledTask]) -> None:
        for task in queryset:
            definitions.task_pause(task=task)
        messages.success(request, f"Paused {queryset.count()} task(s).")

    @admin.action(description="Resume selected tasks")
    def resume(self, request: HttpRequest, queryset: QuerySet[ScheduledTask]) -> None:
        for task in queryset:
            definitions.task_resume(task=task)
        messages.success(request, f"Resumed {queryset.count()} task(s).")

    @admin.action(description="Run selected tasks now")
    def run_now(self, request: HttpRequest, queryset: QuerySet[ScheduledTask]) -> None:
        for task in queryset:
            dispatch.task_run_now(task=task)
        messages.success(request, f"Queued {queryset.count()} run(s).")


# --- executions ----------------------------------------------------------------------------


def _table(headers: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    head = format_html_join("", "<th>{}</th>", ((name,) for name in headers))
    body = format_html_join(
        "",
        "<tr>{}</tr>",
        ((format_html_join("", "<td>{}</td>", ((cell,) for cell in row)),) for row in rows),
    )
    return format_html("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", head, body)


def _report_id(execution: TaskExecution) -> str | None:
    candidates = [execution.result, *(step.get("result") for step in execution.steps or [])]
    for value in candidates:
        if isinstance(value, dict) and value.get("reportId"):
            try:
                return str(uuid.UUID(str(value["reportId"])))
            except ValueError:
                continue
    return None


RUN_FIELDS = ("task_link", "outcome", "trigger", "scheduled_for", "error_text", "report")
RESULT_FIELDS = ("result_pretty", "input_tokens", "output_tokens")
PAYLOAD_FIELDS = ("payload_pretty", "trigger_depth")
TIMING_FIELDS = (
    "queued_at",
    "enqueued_at",
    "started_at",
    "completed_at",
    "duration",
    "attempt",
    "deliveries",
    "worker",
    "next_attempt_at",
    "held",
)


@admin.register(TaskExecution)
class TaskExecutionAdmin(OperatorAdmin):
    """Read-only; superusers may delete."""

    list_display = ("task", *EXECUTION_COLUMNS)
    list_filter = ("status", "trigger", ("task", admin.RelatedOnlyFieldListFilter))
    search_fields = ("task__name", "error")
    list_select_related = ("task",)
    date_hierarchy = "queued_at"
    fieldsets = (
        ("Run", {"fields": RUN_FIELDS}),
        ("Timing", {"fields": TIMING_FIELDS}),
        ("Result", {"fields": RESULT_FIELDS}),
        ("Chain steps", {"fields": ("steps_table",)}),
        ("Logs", {"fields": ("logs_table",)}),
        ("Trigger input", {"fields": PAYLOAD_FIELDS}),
    )
    readonly_fields = (
        *RUN_FIELDS,
        *TIMING_FIELDS,
        *RESULT_FIELDS,
        "steps_table",
        "logs_table",
        *PAYLOAD_FIELDS,
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_active and request.user.is_superuser)

    @admin.display(description="status", ordering="status")
    def outcome(self, execution: TaskExecution) -> str:
        return badge(execution.status)

    @admin.display(description="duration", ordering="duration_ms")
    def duration(self, execution: TaskExecution) -> str:
        return duration_text(execution.duration_ms)

    @admin.display(description="task")
    def task_link(self, execution: TaskExecution) -> str:
        url = reverse("admin:tasks_app_scheduledtask_change", args=[execution.task_id])
        return format_html('<a href="{}">{}</a>', url, execution.task)

    @admin.display(description="error")
    def error_text(self, execution: TaskExecution) -> str:
        return mask_text(execution.error) or "-"

    @admin.display(description="report")
    def report(self, execution: TaskExecution) -> str:
        report_id = _report_id(execution)
        if report_id is None:
            return "-"
        try:
            url = reverse("report-download", kwargs={"pk": report_id}) + "?format=html"
        except NoReverseMatch:
            url = f"/api/reports/{report_id}/download?format=html"
        return format_html('<a href="{}">Report (HTML)</a>', url)

    @admin.display(description="result")
    def result_pretty(self, execution: TaskExecution) -> str:
        return pretty_json(execution.result) if execution.result is not None else "-"

    @admin.display(description="trigger input")
    def payload_pretty(self, execution: TaskExecution) -> str:
        return pretty_json(execution.payload) if execution.payload is not None else "-"

    @admin.display(description="steps")
    def steps_table(self, execution: TaskExecution) -> str:
        steps = [step for step in execution.steps or [] if isinstance(step, dict)]
        if not steps:
            return "-"
        return _table(
            ("step", "type", "status", "attempt", "duration", "error", "result"),
            (
                (
                    int(step.get("index", position)) + 1,
                    step.get("type") or "-",
                    badge(step.get("status")),
                    step.get("attempt", "-"),
                    duration_text(step.get("durationMs")),
                    excerpt(step.get("error")) or "-",
                    excerpt(step.get("result")) or "-",
                )
                for position, step in enumerate(steps)
            ),
        )

    @admin.display(description="logs")
    def logs_table(self, execution: TaskExecution) -> str:
        logs = [entry for entry in execution.logs or [] if isinstance(entry, dict)]
        if not logs:
            return "-"
        return _table(
            ("time", "level", "message"),
            (
                (
                    _when(entry.get("at", "")),
                    entry.get("level", ""),
                    mask_text(str(entry.get("message", ""))),
                )
                for entry in logs
            ),
        )


@admin.register(TaskWebhook)
class TaskWebhookAdmin(OperatorAdmin):
    list_display = (
        "webhook_id",
        "task",
        "active",
        "require_signature",
        "created_at",
        "last_used_at",
    )
    exclude = ("secret", "previous_secret")  # shown once, by the API, never again
    readonly_fields = (
        "webhook_id",
        "created_at",
        "last_used_at",
        "revoked_at",
        "previous_secret_expires_at",
    )
    list_select_related = ("task",)


admin.site.unregister(PeriodicTask)


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(BeatPeriodicTaskAdmin):
    """django-celery-beat's page, with the rows of scheduled tasks read-only: they are
    derived from their task (pause, resume or edit the task instead)."""

    @staticmethod
    def _is_derived(obj: Any) -> bool:
        return obj is not None and obj.name.startswith(BEAT_ENTRY_PREFIX)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return not self._is_derived(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return not self._is_derived(obj) and super().has_delete_permission(request, obj)

    def _own_rows(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        derived = queryset.filter(name__startswith=BEAT_ENTRY_PREFIX).count()
        if derived:
            messages.warning(
                request,
                f"Left {derived} scheduled task row(s) alone: pause, "
                "resume or run them from Scheduled tasks.",
            )
        return queryset.exclude(name__startswith=BEAT_ENTRY_PREFIX)

    def enable_tasks(self, request: HttpRequest, queryset: QuerySet) -> None:
        super().enable_tasks(request, self._own_rows(request, queryset))

    def disable_tasks(self, request: HttpRequest, queryset: QuerySet) -> None:
        super().disable_tasks(request, self._own_rows(request, queryset))

    def toggle_tasks(self, request: HttpRequest, queryset: QuerySet) -> None:
        super().toggle_tasks(request, self._own_rows(request, queryset))

    def run_tasks(self, request: HttpRequest, queryset: QuerySet) -> None:
        super().run_tasks(request, self._own_rows(request, queryset))
