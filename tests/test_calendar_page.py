"""The /calendar/ page: month and week views of planned and past runs, per-user isolation
(staff see everyone's), the chosen timezone, DST marks, bounds, and the admin's link to it."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bs4 import BeautifulSoup, Tag
from django.test import Client
from django.utils import timezone

from tasks_app.models import ScheduledTask, TaskExecution
from tests.api_clients import forced_client

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[1]
ACTION = {"type": "webhook", "url": "https://api.example.com/notify", "method": "POST"}


def make_task(user: Any, name: str, cron: str, zone: str = "UTC", **schedule: Any) -> str:
    body = {
        "name": name,
        "type": "recurring",
        "schedule": {"cron": cron, "timezone": zone, **schedule},
        "action": ACTION,
    }
    response = forced_client(user).post("/api/tasks", body, format="json")
    assert response.status_code == 201, response.json()
    return str(response.json()["id"])


def page(user: Any, **query: str) -> tuple[int, BeautifulSoup]:
    client = Client()
    client.force_login(user)
    response = client.get("/calendar/", query)
    return response.status_code, BeautifulSoup(response.content, "html.parser")


def cells(soup: BeautifulSoup) -> dict[str, Tag]:
    return {str(td["data-date"]): td for td in soup.select("td[data-date]")}


def entries(cell: Tag, name: str | None = None) -> list[Tag]:
    found = cell.select("li.entry")
    return [li for li in found if name is None or name in li.get_text()]


@pytest.fixture
def alice(django_user_model: Any) -> Any:
    return django_user_model.objects.create(username="alice")


@pytest.fixture
def bob(django_user_model: Any) -> Any:
    return django_user_model.objects.create(username="bob")


@pytest.fixture
def ops(django_user_model: Any) -> Any:
    return django_user_model.objects.create(username="ops", is_staff=True, is_superuser=True)


def next_monday(weeks: int = 2) -> date:
    today = timezone.now().date()
    return today - timedelta(days=today.weekday()) + timedelta(weeks=weeks)


def test_anonymous_visitors_are_sent_to_the_admin_login() -> None:
    response = Client().get("/calendar/?view=week")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/calendar/")


def test_week_view_shows_a_weekday_task_on_weekdays_in_the_chosen_timezone(alice: Any) -> None:
    task_id = make_task(alice, "Standup", "0 9 * * 1-5", "Europe/Paris")
    monday = next_monday()
    status, soup = page(alice, view="week", date=monday.isoformat(), tz="UTC")
    assert status == 200
    days = cells(soup)
    assert list(days) == [(monday + timedelta(days=n)).isoformat() for n in range(7)]
    with_runs = [day for day, cell in days.items() if entries(cell, "Standup")]
    assert with_runs == list(days)[:5]  # Monday to Friday only
    first = entries(days[monday.isoformat()], "Standup")[0]
    assert "st-planned" in first["class"]
    assert first.get_text().strip().startswith(("08:00", "07:00"))  # 09:00 Paris in UTC
    assert first.a is not None and first.a["href"] == f"/api/tasks/{task_id}"

    # 09:00 in Paris is the evening before in Honolulu: Sunday to Thursday there.
    status, soup = page(alice, view="week", date=monday.isoformat(), tz="Pacific/Honolulu")
    days = cells(soup)
    shown = [date.fromisoformat(day).weekday() for day, c in days.items() if entries(c)]
    assert sorted(shown) == [0, 1, 2, 3, 6]
    assert all(li.get_text().strip().startswith(("21:00", "22:00")) for li in soup.select("li"))


def test_users_see_their_own_tasks_and_staff_see_everyones(alice: Any, bob: Any, ops: Any) -> None:
    mine = make_task(alice, "Alice daily", "0 12 * * *")
    make_task(bob, "Bob daily", "0 12 * * *")
    month = (timezone.now() + timedelta(days=40)).date().replace(day=1)
    status, soup = page(alice, view="month", date=month.isoformat())
    text = soup.get_text()
    assert status == 200 and "Alice daily" in text and "Bob daily" not in text
    assert cells(soup)[month.isoformat()].select_one("li.st-planned") is not None
    status, soup = page(ops, view="month", date=month.isoformat())
    text = soup.get_text()
    assert status == 200 and "Alice daily" in text and "Bob daily" in text
    links = {a["href"] for a in soup.select("li.entry a")}
    assert f"/admin/tasks_app/scheduledtask/{mine}/change/" in links
    assert "Everyone's tasks" in text


def test_past_runs_are_coloured_by_status_and_link_to_their_execution(alice: Any, ops: Any) -> None:
    task_id = make_task(alice, "Nightly", "0 2 * * *")
    task = ScheduledTask.objects.get(pk=task_id)
    day = timezone.now().astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    day -= timedelta(days=2)
    runs = {
        status: TaskExecution.objects.create(
            task=task, trigger="scheduled", status=status, scheduled_for=day + timedelta(hours=n)
        )
        for n, status in enumerate(["completed", "failed", "skipped"], start=1)
    }
    status, soup = page(alice, view="week", date=day.date().isoformat())
    cell = cells(soup)[day.date().isoformat()]
    classes = [cls for li in entries(cell) for cls in li["class"] if str(cls).startswith("st-")]
    assert classes == ["st-completed", "st-failed", "st-skipped"]
    assert {s.get_text() for s in soup.select(".legend span[class^='st-']")} >= {
        "planned",
        "queued",
        "running",
        "retrying",
        "completed",
        "failed",
        "skipped",
    }
    assert entries(cell)[1].a["href"] == f"/api/executions/{runs['failed'].pk}"
    _, soup = page(ops, view="week", date=day.date().isoformat())
    failed = cells(soup)[day.date().isoformat()].select_one("li.st-failed a")
    assert failed is not None
    assert failed["href"] == f"/admin/tasks_app/taskexecution/{runs['failed'].pk}/change/"


def test_daylight_saving_changes_are_marked(alice: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    frozen = datetime(2026, 3, 1, tzinfo=UTC)
    monkeypatch.setattr(timezone, "now", lambda: frozen)
    make_task(alice, "Half past two", "30 2 * * *", "America/New_York")
    status, soup = page(alice, view="month", date="2026-03-01", tz="America/New_York")
    assert status == 200
    days = cells(soup)
    marked = [day for day, cell in days.items() if cell.select("li .dst")]
    assert marked == ["2026-03-08"]
    shifted = entries(days["2026-03-08"], "Half past two")[0]
    assert shifted.get_text().strip().startswith("03:00")
    assert "does not exist" in str(shifted.select_one(".dst")["title"])
    assert entries(days["2026-03-07"])[0].get_text().strip().startswith("02:30")
    clocks = [day for day, cell in days.items() if cell.select(".clocks")]
    assert clocks == ["2026-03-08"]
    assert "forward 1 h" in days["2026-03-08"].select_one(".clocks").get_text()
    _, soup = page(alice, view="week", date="2026-11-01", tz="America/New_York")
    assert "back 1 h" in cells(soup)["2026-11-01"].select_one(".clocks").get_text()


def test_windows_and_paused_tasks_are_honoured_by_the_page_and_the_api(alice: Any) -> None:
    monday = next_monday()
    end = datetime.combine(monday + timedelta(days=2), datetime.min.time(), tzinfo=UTC)
    make_task(alice, "Windowed", "0 6 * * *", endAt=(end + timedelta(hours=7)).isoformat())
    paused = make_task(alice, "Paused", "0 7 * * *")
    assert forced_client(alice).post(f"/api/tasks/{paused}/pause").status_code == 200
    _, soup = page(alice, view="week", date=monday.isoformat())
    days = [day for day, cell in cells(soup).items() if entries(cell, "Windowed")]
    assert days == [(monday + timedelta(days=n)).isoformat() for n in range(3)]
    assert "Paused" not in soup.get_text(" ")
    start = datetime.combine(monday, datetime.min.time(), tzinfo=UTC)
    answer = forced_client(alice).get(
        "/api/calendar",
        {"start": start.isoformat(), "end": (start + timedelta(days=7)).isoformat()},
    )
    planned = [e for e in answer.json()["occurrences"] if e["status"] == "planned"]
    assert [e["name"] for e in planned] == ["Windowed"] * 3


def test_the_work_per_page_is_bounded(alice: Any) -> None:
    make_task(alice, "Every minute", "* * * * *")
    make_task(alice, "Every five minutes", "*/5 * * * *")
    monday = next_monday()
    _, soup = page(alice, view="month", date=monday.isoformat())
    cell = cells(soup)[monday.isoformat()]
    assert len(entries(cell)) == 6 and "+6 more" in cell.get_text()  # 6 planned per task
    assert "…" in cell.get_text() and "more than 6 times a day" in soup.get_text()
    _, soup = page(alice, view="week", date=monday.isoformat())
    cell = cells(soup)[monday.isoformat()]
    assert len(entries(cell)) == 40 and "+8 more" in cell.get_text()  # 24 per task


def test_bad_parameters_are_named(alice: Any) -> None:
    status, soup = page(alice, tz="Mars/Olympus", view="year", date="soon")
    text = soup.get_text()
    assert status == 400
    assert "Mars/Olympus" in text and "view must be" in text and "YYYY-MM-DD" in text


def test_navigation_keeps_the_view_and_timezone(alice: Any) -> None:
    _, soup = page(alice, view="month", date="2027-01-15", tz="Asia/Tokyo")
    prev, next_ = soup.select_one("a[rel=prev]"), soup.select_one("a[rel=next]")
    assert prev["href"] == "/calendar/?view=month&date=2026-12-01&tz=Asia%2FTokyo"
    assert next_["href"] == "/calendar/?view=month&date=2027-02-01&tz=Asia%2FTokyo"
    assert soup.select_one("option[selected]")["value"] == "Asia/Tokyo"
    _, soup = page(alice, view="week", date="2027-01-15")
    assert soup.select_one("a[rel=next]")["href"].endswith("date=2027-01-18&tz=UTC")


def _admin_index(user: Any) -> BeautifulSoup:
    client = Client()
    client.force_login(user)
    response = client.get("/admin/")
    assert response.status_code == 200
    return BeautifulSoup(response.content, "html.parser")


def _header_has_calendar_link(soup: BeautifulSoup) -> bool:
    links = soup.select("#user-tools a")
    return any(a["href"] == "/calendar/" and a.get_text() == "Calendar" for a in links)


def test_the_admin_header_links_to_the_calendar(ops: Any) -> None:
    soup = _admin_index(ops)
    assert _header_has_calendar_link(soup)
    assert soup.select_one("#site-name a") is not None  # the branding is kept


def test_a_user_who_is_not_staff_can_log_in_for_the_calendar(django_user_model: Any) -> None:
    django_user_model.objects.create_user(username="plain", password="pw-123456")
    client = Client()
    page = client.get("/accounts/login/?next=/calendar/")
    assert page.status_code == 200
    answer = client.post(
        "/accounts/login/?next=/calendar/", {"username": "plain", "password": "pw-123456"}
    )
    assert answer.status_code == 302 and answer["Location"] == "/calendar/"
    assert client.get("/calendar/").status_code == 200
