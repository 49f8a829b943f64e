"""Operators' admin. Saving a task goes through the model's validation and schedule sync;
the beat rows it produces show under "Periodic tasks" (django-celery-beat's admin)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from functools import cache
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django_celery_beat.admin import PeriodicTaskAdmin as BeatPeriodicTaskAdmin
from django_celery_beat.models import PeriodicTask

from .conf import BEAT_ENTRY_PREFIX
from .models import EDITABLE_FIELDS, ScheduledTask, TaskExecution, TaskWebhook
from .services import definitions, dispatch
from .services.lateness import LateTask, tasks_late


class ExecutionInline(admin.TabularInline):
    model = TaskExecution
    fields = ("status", "trigger", "scheduled_for", "started_at", "duration_ms", "attempt", "error")
    readonly_fields = fields
    extra = 0
    max_num = 0
    show_change_link = True
    ordering = ("-queued_at",)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).defer("logs", "result", "payload")


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


def late_label(entry: LateTask | None, task: ScheduledTask) -> str:
    """The "late" column: "late since 2024-05-01 09:00 UTC", from the start of the episode
    when the periodic check has recorded it (``late_since``)."""
    if entry is None:
        return "-"
    since = min(entry.occurrence, task.late_since or entry.occurrence).astimezone(UTC)
    return f"late since {since:%Y-%m-%d %H:%M} UTC"


@admin.register(ScheduledTask)
class ScheduledTaskAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "owner",
        "type",
        "status",
        "schedule",
        "next_run",
        "last_run",
        "run_count",
    )
    list_filter = ("status", "type", LateFilter)
    search_fields = ("name", "description")
    list_select_related = ("owner",)
    readonly_fields = (
        "status",
        "last_run",
        "next_run",
        "run_count",
        "beat_entry",
        "created_at",
        "updated_at",
        "history",
    )
    fields = ("owner", *EDITABLE_FIELDS, *readonly_fields)
    inlines = [ExecutionInline]
    actions = ["pause", "resume", "run_now"]

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

    @admin.display(description="schedule")
    def schedule(self, task: ScheduledTask) -> str:
        if task.type == "recurring":
            return f"{task.cron} ({task.timezone})"
        if task.type == "one-time":
            return f"at {task.run_at:%Y-%m-%d %H:%M:%S %Z}" if task.run_at else "-"
        return f"on {(task.trigger or {}).get('type', '?')}"

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


@admin.register(TaskExecution)
class TaskExecutionAdmin(admin.ModelAdmin):
    list_display = (
        "task",
        "status",
        "trigger",
        "scheduled_for",
        "started_at",
        "duration_ms",
        "attempt",
    )
    list_filter = ("status", "trigger")
    search_fields = ("task__name", "error")
    list_select_related = ("task",)
    date_hierarchy = "queued_at"

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in TaskExecution._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(TaskWebhook)
class TaskWebhookAdmin(admin.ModelAdmin):
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
