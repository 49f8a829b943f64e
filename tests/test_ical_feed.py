"""The iCal feed: a secret URL per user (shown once, stored hashed), regenerated and revoked
through /api/calendar/feed, listing exactly the planned runs the task preview lists."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import icalendar
import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from tasks_app.models import CalendarFeed
from tests.api_clients import forced_client

pytestmark = pytest.mark.django_db

ACTION = {"type": "webhook", "url": "https://api.example.com/notify", "method": "POST"}


@pytest.fixture
def alice(django_user_model: Any) -> Any:
    return django_user_model.objects.create(username="alice")


@pytest.fixture
def api(alice: Any) -> APIClient:
    return forced_client(alice)


def create(api: APIClient, name: str, schedule: dict[str, Any], **extra: Any) -> str:
    body = {"name": name, "type": "recurring", "schedule": schedule, "action": ACTION, **extra}
    response = api.post("/api/tasks", body, format="json")
    assert response.status_code == 201, response.json()
    return str(response.json()["id"])


def issue(api: APIClient) -> str:
    response = api.post("/api/calendar/feed")
    assert response.status_code == 201, response.json()
    return str(response.json()["url"])


def fetch(url: str) -> Any:
    return Client().get(urlsplit(url).path)


def events(url: str) -> list[Any]:
    response = fetch(url)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/calendar")
    return list(icalendar.Calendar.from_ical(response.content).walk("VEVENT"))


def test_the_feed_lists_exactly_the_previewed_runs(api: APIClient, settings: Any) -> None:
    settings.SCHEDULER_PUBLIC_URL = "https://tasks.example.com"
    now = timezone.now()
    task = create(
        api,
        "Standup",
        {
            "cron": "0 9 * * 1-5",
            "timezone": "Europe/Paris",
            "startAt": (now + timedelta(days=2)).isoformat(),
            "endAt": (now + timedelta(days=16)).isoformat(),
        },
    )
    paused = create(api, "Paused", {"cron": "0 8 * * *", "timezone": "UTC"})
    api.post(f"/api/tasks/{paused}/pause")
    url = issue(api)
    assert url.startswith("https://tasks.example.com/calendar/") and url.endswith(".ics")
    feed = icalendar.Calendar.from_ical(fetch(url).content)
    assert str(feed["X-WR-CALNAME"]) == "Scheduled tasks of alice"
    found = list(feed.walk("VEVENT"))
    preview = api.get(f"/api/tasks/{task}/preview", {"count": 100}).json()
    expected = [datetime.fromisoformat(run).astimezone(UTC) for run in preview["runs"]]
    assert 8 <= len(expected) <= 11
    assert [event.decoded("DTSTART") for event in found] == expected
    assert all(event["DTSTART"].to_ical().endswith(b"Z") for event in found)  # in UTC
    assert {str(event["SUMMARY"]) for event in found} == {"Standup"}
    description = str(found[0]["DESCRIPTION"])
    assert preview["description"] in description
    assert f"https://tasks.example.com/api/tasks/{task}" in description
    assert [str(e["UID"]) for e in events(url)] == [str(e["UID"]) for e in found]  # stable
    assert str(found[0]["UID"]).startswith(f"{task}-")


def test_the_url_is_shown_once_stored_hashed_and_regenerated(api: APIClient, alice: Any) -> None:
    assert api.get("/api/calendar/feed").json()["exists"] is False
    create(api, "Daily", {"cron": "0 6 * * *", "timezone": "UTC"})
    first = issue(api)
    token = urlsplit(first).path.rsplit("/", 1)[1].removesuffix(".ics")
    assert len(token) >= 43
    stored = CalendarFeed.objects.get(owner=alice)
    assert stored.token_hash == hashlib.sha256(token.encode()).hexdigest()
    state = api.get("/api/calendar/feed").json()
    assert state["exists"] is True and "url" not in state and token not in str(state)
    assert len(events(first)) > 0
    assert api.get("/api/calendar/feed").json()["lastUsedAt"] is not None
    second = issue(api)
    assert second != first
    assert fetch(first).status_code == 404
    assert len(events(second)) > 0
    assert api.delete("/api/calendar/feed").status_code == 204
    assert fetch(second).status_code == 404
    assert api.get("/api/calendar/feed").json()["exists"] is False


def test_another_users_feed_never_shows_my_tasks(api: APIClient, django_user_model: Any) -> None:
    mine = create(api, "Alice secret job", {"cron": "0 6 * * *", "timezone": "UTC"})
    staff = django_user_model.objects.create(username="ops", is_staff=True)
    staff_api = forced_client(staff)
    theirs = create(staff_api, "Ops job", {"cron": "0 7 * * *", "timezone": "UTC"})
    body = fetch(issue(staff_api)).content.decode()
    assert "Alice secret job" not in body and mine not in body
    found = icalendar.Calendar.from_ical(body).walk("VEVENT")
    assert found and {str(e["SUMMARY"]) for e in found} == {"Ops job"}
    assert f"/admin/tasks_app/scheduledtask/{theirs}/change/" in str(found[0]["DESCRIPTION"])
    assert "Ops job" not in fetch(issue(api)).content.decode()


def test_unknown_tokens_are_404_and_the_feed_is_throttled(settings: Any) -> None:
    settings.SCHEDULER_ICAL_RATE_PER_MINUTE = 3
    client = Client()
    answers = [client.get(f"/calendar/{'x' * 43}.ics").status_code for _ in range(4)]
    assert answers == [404, 404, 404, 429]


def test_the_feed_api_needs_a_login() -> None:
    assert APIClient().post("/api/calendar/feed").status_code in (401, 403)
    assert APIClient().get("/api/calendar/feed").status_code in (401, 403)
