"""GET /calendar/<token>.ics: a user's planned runs for the next days, for calendar apps.

No login: the secret token in the URL is the credential (POST /api/calendar/feed makes or
regenerates it). Unknown tokens answer 404; requests are limited per client address."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_safe
from icalendar import Calendar, Event

from .. import selectors
from ..models import ScheduledTask, TaskStatus, TaskType
from ..services.calendar import calendar_feed_owner, planned_occurrences

FEED_DAYS = 30
FEED_PER_TASK = 200  # events per task in the feed
FEED_MAX_TASKS = 500
RATE_PER_MINUTE = 60  # requests per client address (settings.SCHEDULER_ICAL_RATE_PER_MINUTE)
PRODID = "-//scheduled-tasks//calendar feed//EN"


@require_safe
def calendar_feed(request: HttpRequest, token: str) -> HttpResponse:
    if _throttled(request):
        return HttpResponse("Too many requests\n", status=429, headers={"Retry-After": "60"})
    owner = calendar_feed_owner(token)
    if owner is None:
        return HttpResponse("Not found\n", status=404, content_type="text/plain")
    body = feed_calendar(owner, base_url=public_base_url(request)).to_ical()
    return HttpResponse(
        body,
        content_type="text/calendar; charset=utf-8",
        headers={
            "Content-Disposition": 'inline; filename="scheduled-tasks.ics"',
            "Cache-Control": "private, max-age=300",
            "Referrer-Policy": "no-referrer",
            "X-Robots-Tag": "noindex",
        },
    )


def public_base_url(request: HttpRequest) -> str:
    return settings.SCHEDULER_PUBLIC_URL or request.build_absolute_uri("/").rstrip("/")


def feed_calendar(owner: User, *, base_url: str, now: datetime | None = None) -> Calendar:
    """A VCALENDAR with one VEVENT per planned occurrence of ``owner``'s own active tasks
    in the next ``FEED_DAYS`` days (at most ``FEED_PER_TASK`` per task)."""
    now = now or timezone.now()
    calendar = Calendar()
    calendar.add("prodid", PRODID)
    calendar.add("version", "2.0")
    calendar.add("calscale", "GREGORIAN")
    calendar.add("method", "PUBLISH")
    calendar.add("x-wr-calname", f"Scheduled tasks of {owner.get_username()}")
    calendar.add("x-published-ttl", "PT1H")
    tasks = ScheduledTask.objects.filter(
        owner=owner, status=TaskStatus.ACTIVE, type__in=(TaskType.RECURRING, TaskType.ONE_TIME)
    ).order_by("name", "pk")[:FEED_MAX_TASKS]
    for task in tasks:
        fires = planned_occurrences(
            task, start=now, end=now + timedelta(days=FEED_DAYS), limit=FEED_PER_TASK, now=now
        )
        if not fires:
            continue
        about = _description(task, owner, base_url)
        for at, mark in fires:
            event = Event()
            event.add("uid", f"{task.pk}-{at.astimezone(UTC):%Y%m%dT%H%M%SZ}@scheduled-tasks")
            event.add("dtstamp", now.astimezone(UTC))
            event.add("dtstart", at.astimezone(UTC))
            event.add("summary", task.name)
            dst = f"\n\nDaylight saving: {mark.note}" if mark is not None else ""
            event.add("description", f"{about[0]}{dst}\n\n{about[1]}")
            event.add("url", about[1])
            event.add("transp", "TRANSPARENT")
            calendar.add_component(event)
    return calendar


def _description(task: ScheduledTask, owner: User, base_url: str) -> tuple[str, str]:
    """The schedule in words, and where to look at the task (the admin for staff)."""
    described = selectors.schedule_preview(
        task_type=task.type, cron=task.cron, zone=task.timezone, at=task.run_at, count=0
    )["description"]
    if owner.is_staff:
        path = reverse("admin:tasks_app_scheduledtask_change", args=[task.pk])
    else:
        path = reverse("task-detail", kwargs={"pk": task.pk})
    return str(described), f"{base_url}{path}"


def _throttled(request: HttpRequest) -> bool:
    limit = getattr(settings, "SCHEDULER_ICAL_RATE_PER_MINUTE", RATE_PER_MINUTE)
    key = f"calendar-feed:{request.META.get('REMOTE_ADDR', '')}"
    cache.add(key, 0, timeout=60)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=60)
        count = 1
    return count > limit
