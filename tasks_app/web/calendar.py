"""GET /calendar/?view=month|week&date=YYYY-MM-DD&tz=Area/City: a month or week of planned
occurrences and past runs, coloured by status, with daylight-saving changes marked.

Staff see every user's tasks, everyone else their own; the work per page is bounded (tasks,
planned runs per task and per day, past runs, entries shown per day: "+N more")."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo, available_timezones

from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.views.decorators.http import require_GET

from .. import cron as cronlib
from .. import selectors
from ..models import ExecutionStatus
from ..services.calendar import PLANNED, Calendar, Entry, calendar_entries, local_days

VIEWS = ("month", "week")
SHOWN_PER_DAY = {"month": 6, "week": 40}  # entries listed in a day's cell, then "+N more"
PLANNED_PER_TASK_PER_DAY = {"month": 6, "week": 24}
PLANNED_PER_TASK = 1000
MAX_TASKS = 500
MAX_PLANNED = 15000  # occurrences computed per page, in all
MAX_RUNS = 3000
LEGEND = [PLANNED, *ExecutionStatus.values]
_DAY = timedelta(days=1)


@dataclass
class Item:
    time: str
    name: str
    status: str
    url: str
    title: str
    dst: str = ""


@dataclass
class Day:
    day: date
    in_range: bool
    today: bool
    items: list[Item] = field(default_factory=list)
    more: int = 0
    partial: bool = False  # some task had more planned runs that day than were computed
    clocks: str = ""  # "clocks go forward/back" in the selected timezone


@login_required
@require_GET
def calendar_page(request: HttpRequest) -> HttpResponse:
    user = request.user
    assert isinstance(user, User)
    errors: list[str] = []
    view = request.GET.get("view", "month")
    if view not in VIEWS:
        errors.append(f"view must be month or week, not {view!r}")
        view = "month"
    tz = request.GET.get("tz") or "UTC"
    try:
        zone = ZoneInfo(cronlib.validate_timezone(tz))
    except cronlib.CronError as exc:
        errors.append(f"tz: {exc}")
        tz, zone = "UTC", ZoneInfo("UTC")
    today = timezone.now().astimezone(zone).date()
    try:
        anchor = date.fromisoformat(request.GET.get("date") or today.isoformat())
    except ValueError:
        errors.append("date must be YYYY-MM-DD")
        anchor = today
    first, last, before, after, heading = _range(view, anchor)
    grid_first = first - timedelta(days=first.weekday())
    grid_last = last + timedelta(days=6 - last.weekday())
    days = local_days(grid_first, grid_last, zone)
    found = calendar_entries(
        tasks=selectors.tasks_visible_to(user),
        executions=selectors.executions_visible_to(user),
        start=days[0][1],
        end=days[-1][2],
        planned_per_task=PLANNED_PER_TASK,
        planned_per_day=PLANNED_PER_TASK_PER_DAY[view],
        zone=zone,
        max_tasks=MAX_TASKS,
        max_runs=MAX_RUNS,
        max_planned=MAX_PLANNED,
    )
    cells = _cells(found, days, zone, first, last, today, SHOWN_PER_DAY[view], user.is_staff)

    def link(**changes: str) -> str:
        query = {"view": view, "date": anchor.isoformat(), "tz": tz, **changes}
        return f"{request.path}?{urlencode(query)}"

    context = {
        "view": view,
        "tz": tz,
        "anchor": anchor,
        "heading": heading,
        "weeks": [cells[i : i + 7] for i in range(0, len(cells), 7)],
        "weekdays": ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"],
        "legend": LEGEND,
        "zones": _zones(),
        "errors": errors,
        "notes": _notes(found, PLANNED_PER_TASK_PER_DAY[view]),
        "everyone": user.is_staff,
        "prev_url": link(date=before.isoformat()),
        "next_url": link(date=after.isoformat()),
        "today_url": link(date=today.isoformat()),
        "month_url": link(view="month"),
        "week_url": link(view="week"),
    }
    return render(request, "tasks_app/calendar.html", context, status=400 if errors else 200)


def _range(view: str, anchor: date) -> tuple[date, date, date, date, str]:
    """The days shown (first, last), the anchors of the previous and next page, a title."""
    if view == "week":
        first = anchor - timedelta(days=anchor.weekday())
        last = first + timedelta(days=6)
        return first, last, first - 7 * _DAY, first + 7 * _DAY, f"Week of {first} to {last}"
    first = anchor.replace(day=1)
    following = (first + 32 * _DAY).replace(day=1)
    last = following - _DAY
    return first, last, (first - _DAY).replace(day=1), following, f"{first:%B %Y}"


def _cells(
    found: Calendar,
    days: list[tuple[date, datetime, datetime]],
    zone: ZoneInfo,
    first: date,
    last: date,
    today: date,
    shown: int,
    staff: bool,
) -> list[Day]:
    cells = {
        day: Day(day, first <= day <= last, day == today, clocks=_clock_change(begin, end, zone))
        for day, begin, end in days
    }
    for entry in found.entries:
        cell = cells.get(entry.at.astimezone(zone).date())
        if cell is None:
            continue
        if len(cell.items) < shown:
            cell.items.append(_item(entry, zone, staff))
        else:
            cell.more += 1
    for _task, day in found.capped:
        if day in cells:
            cells[day].partial = True
    return list(cells.values())


def _item(entry: Entry, zone: ZoneInfo, staff: bool) -> Item:
    local = entry.at.astimezone(zone)
    if entry.execution_id is not None:
        name, pk = ("admin:tasks_app_taskexecution_change", "execution"), entry.execution_id
    else:
        name, pk = ("admin:tasks_app_scheduledtask_change", "task-detail"), entry.task_id
    url = reverse(name[0] if staff else name[1], kwargs={"object_id" if staff else "pk": pk})
    whose = f" ({entry.owner})" if staff and entry.owner else ""
    title = f"{entry.name}{whose}: {entry.status} at {local.isoformat()}"
    dst = entry.dst.note if entry.dst is not None else ""
    return Item(f"{local:%H:%M}", entry.name, entry.status, url, title, dst)


def _clock_change(begin: datetime, end: datetime, zone: ZoneInfo) -> str:
    before = begin.astimezone(zone).utcoffset()
    after = (end - timedelta(microseconds=1)).astimezone(zone).utcoffset()
    if before is None or after is None or before == after:
        return ""
    way = "forward" if after > before else "back"
    minutes = abs(int((after - before).total_seconds())) // 60
    amount = f"{minutes // 60} h" if minutes % 60 == 0 else f"{minutes} min"
    return f"Clocks go {way} {amount} in {zone.key} ({_offset(before)} to {_offset(after)})"


def _offset(offset: timedelta) -> str:
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _notes(found: Calendar, per_day: int) -> list[str]:
    notes = []
    if found.tasks_capped:
        notes.append(
            "Planned runs are shown for the first active tasks by name only (at most "
            f"{MAX_TASKS} tasks and {MAX_PLANNED} runs a page); try the week view."
        )
    if found.runs_capped:
        notes.append(f"Only the first {MAX_RUNS} past runs in this range are shown.")
    if any(day is not None for _task, day in found.capped):
        notes.append(
            f"Days marked with … have tasks that run more than {per_day} times a day; "
            "only their first runs are listed (the week view lists more)."
        )
    return notes


@cache
def _zones() -> list[str]:
    return sorted(available_timezones())
