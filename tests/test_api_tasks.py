"""The task API: the guide's requests with a token, per-user isolation, path-keyed errors."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from rest_framework.test import APIClient

from tasks_app.models import ScheduledTask, TaskExecution
from tests.api_clients import client_for
from tests.guide import GUIDE_CREATE

pytestmark = pytest.mark.django_db

WEBHOOK_ACTION = {
    "type": "webhook",
    "url": "https://api.example.com/notify",
    "method": "POST",
    "headers": {"Authorization": "Bearer token"},
    "body": {"message": "Task completed"},
}
DAILY_REPORT = {
    "userId": "user-123",
    "name": "Daily Report",
    "description": "Generate daily analytics report",
    "type": "recurring",
    "schedule": {"cron": "0 9 * * *", "timezone": "America/New_York"},
    "action": WEBHOOK_ACTION,
    "retryPolicy": {"maxRetries": 3, "backoffMs": 60000},
    "notification": {"onSuccess": False, "onFailure": True, "channels": ["email"]},
}


@pytest.fixture
def api(django_user_model: Any) -> APIClient:
    return client_for(django_user_model, "user-123")


@pytest.fixture
def other(django_user_model: Any) -> APIClient:
    return client_for(django_user_model, "mallory")


def test_requests_need_a_token() -> None:
    assert APIClient().get("/api/tasks").status_code in (401, 403)


def test_guide_api_reference_round_trip(
    api: APIClient, django_capture_on_commit_callbacks: Any
) -> None:
    created = api.post("/api/tasks", DAILY_REPORT, format="json")
    assert created.status_code == 201, created.json()
    task = created.json()
    assert task["userId"] == "user-123" and task["type"] == "recurring"
    assert task["schedule"] == {"cron": "0 9 * * *", "timezone": "America/New_York"}
    assert task["retryPolicy"] == {"maxRetries": 3, "backoffMs": 60000}
    assert task["status"] == "active" and task["runCount"] == 0 and task["lastRun"] is None
    assert task["nextRun"].endswith("+00:00")
    task_id = task["id"]

    listed = api.get("/api/tasks?userId=user-123&status=active&type=recurring").json()
    assert [t["id"] for t in listed["results"]] == [task_id]
    assert api.get(f"/api/tasks/{task_id}").json()["name"] == "Daily Report"

    updated = api.put(
        f"/api/tasks/{task_id}",
        {"name": "Updated Name", "schedule": {"cron": "0 10 * * *"}},
        format="json",
    )
    assert updated.status_code == 200, updated.json()
    body = updated.json()
    assert body["name"] == "Updated Name"
    assert body["schedule"] == {"cron": "0 10 * * *", "timezone": "America/New_York"}
    # The Authorization header is a secret: shown when the task was created, masked since.
    assert body["action"] == {**WEBHOOK_ACTION, "headers": {"Authorization": "••••••"}}
    assert body["description"] == DAILY_REPORT["description"]

    assert api.post(f"/api/tasks/{task_id}/pause").json()["status"] == "paused"
    assert PeriodicTask.objects.get(scheduled_task__id=task_id).enabled is False
    assert api.post(f"/api/tasks/{task_id}/resume").json()["status"] == "active"

    with django_capture_on_commit_callbacks() as published:
        run = api.post(f"/api/tasks/{task_id}/run")
    assert run.status_code == 202 and len(published) == 1
    execution = run.json()
    assert (execution["taskId"], execution["status"], execution["trigger"]) == (
        task_id,
        "queued",
        "manual",
    )

    history = api.get(f"/api/tasks/{task_id}/executions?limit=50").json()
    assert [e["id"] for e in history] == [execution["id"]]
    detail = api.get(f"/api/executions/{execution['id']}").json()
    assert detail["logs"] == [] and detail["attempt"] == 0

    upcoming = api.get("/api/tasks/upcoming?userId=user-123&limit=10").json()
    assert [u["taskId"] for u in upcoming] == [task_id]

    assert api.delete(f"/api/tasks/{task_id}").status_code == 204
    assert api.get(f"/api/tasks/{task_id}").status_code == 404
    assert not PeriodicTask.objects.filter(name__endswith=task_id).exists()


def test_guide_example_three_webhook_trigger_and_url(api: APIClient) -> None:
    created = api.post(
        "/api/tasks",
        {
            "userId": "user-123",
            "name": "Process Order",
            "type": "trigger",
            "trigger": {"type": "webhook", "config": {}},
            "action": {"type": "webhook", "url": "https://orders.example.com/confirm"},
        },
        format="json",
    )
    assert created.status_code == 201, created.json()
    assert created.json()["schedule"] is None
    hook = api.post(f"/api/tasks/{created.json()['id']}/webhook")
    assert hook.status_code == 201
    body = hook.json()
    assert body["webhookUrl"] == f"http://testserver/api/webhooks/{body['webhookId']}"
    assert len(body["secret"]) >= 32


def test_one_time_naive_at_is_read_in_the_schedule_timezone(api: APIClient) -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    local = (
        (timezone.now() + timedelta(days=2)).astimezone(tokyo).replace(tzinfo=None, microsecond=0)
    )
    created = api.post(
        "/api/tasks",
        {
            "name": "once",
            "type": "one-time",
            "schedule": {"at": local.isoformat(), "timezone": "Asia/Tokyo"},
            "action": {"type": "webhook", "url": "https://example.com/x"},
        },
        format="json",
    )
    assert created.status_code == 201, created.json()
    stored = ScheduledTask.objects.get()
    assert stored.run_at.astimezone(tokyo).replace(tzinfo=None) == local
    assert created.json()["schedule"]["at"] == stored.run_at.isoformat()  # UTC, with offset
    assert created.json()["schedule"]["at"].endswith("+00:00")


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({**DAILY_REPORT, "schedule": {"cron": "0 0 30 2 *"}}, "schedule.cron"),
        ({**DAILY_REPORT, "schedule": {"cron": "0 9 * *"}}, "schedule.cron"),
        (
            {**DAILY_REPORT, "schedule": {"cron": "0 9 * * *", "timezone": "Mars/Base"}},
            "schedule.timezone",
        ),
        ({**DAILY_REPORT, "schedule": {"cron": "0 9 * * *", "every": 1}}, "schedule.every"),
        ({**DAILY_REPORT, "action": {"type": "webhook", "url": "ftp://x"}}, "action.url"),
        ({**DAILY_REPORT, "action": {"type": "teleport"}}, "action.type"),
        ({**DAILY_REPORT, "retryPolicy": {"maxRetries": -1}}, "retryPolicy.maxRetries"),
        ({**DAILY_REPORT, "notification": {"channels": ["pigeon"]}}, "notification.channels[0]"),
        ({**DAILY_REPORT, "colour": "blue"}, "colour"),
        ({**DAILY_REPORT, "type": "one-time", "schedule": {"at": "yesterday"}}, "schedule.at"),
        (
            {**DAILY_REPORT, "type": "one-time", "schedule": {"at": "2020-01-01T00:00:00Z"}},
            "schedule.at",
        ),
        ({k: v for k, v in DAILY_REPORT.items() if k != "name"}, "name"),
    ],
)
def test_wrong_input_is_a_400_naming_the_field_and_stores_nothing(
    api: APIClient, body: dict[str, Any], path: str
) -> None:
    response = api.post("/api/tasks", body, format="json")
    assert response.status_code == 400, response.json()
    assert path in response.json(), response.json()
    assert not ScheduledTask.objects.exists() and not PeriodicTask.objects.exists()


def test_another_users_task_is_a_404_everywhere(api: APIClient, other: APIClient) -> None:
    task_id = api.post("/api/tasks", DAILY_REPORT, format="json").json()["id"]
    for method, url in [
        ("get", ""),
        ("put", ""),
        ("patch", ""),
        ("delete", ""),
        ("post", "/pause"),
        ("post", "/resume"),
        ("post", "/run"),
        ("get", "/executions"),
        ("get", "/preview"),
        ("post", "/webhook"),
    ]:
        response = getattr(other, method)(f"/api/tasks/{task_id}{url}", {}, format="json")
        assert response.status_code == 404, (method, url, response.status_code)
    assert other.get("/api/tasks").json()["results"] == []
    assert other.post("/api/tasks", DAILY_REPORT, format="json").status_code == 403
    assert ScheduledTask.objects.get().status == "active"
    execution = TaskExecution.objects.create(task=ScheduledTask.objects.get(), trigger="manual")
    assert other.get(f"/api/executions/{execution.pk}").status_code == 404


def test_schedule_preview_describes_and_lists_runs(api: APIClient) -> None:
    response = api.post(
        "/api/schedules/preview",
        {
            "schedule": {"cron": "0 9 * * 1-5", "timezone": "America/New_York"},
            "count": 3,
            "from": "2026-11-27T00:00:00Z",
        },
        format="json",
    )
    assert response.status_code == 200, response.json()
    runs = [
        "2026-11-27T09:00:00-05:00",
        "2026-11-30T09:00:00-05:00",
        "2026-12-01T09:00:00-05:00",
    ]
    assert response.json() == {
        "description": "At 09:00 AM, Monday through Friday (America/New_York)",
        "runs": runs,
        "occurrences": [{"at": run} for run in runs],  # no DST change near these
        "notes": [],
        "warnings": [],
    }
    bad = api.post("/api/schedules/preview", {"schedule": {"cron": "0 0 30 2 *"}}, format="json")
    assert bad.status_code == 400 and "schedule.cron" in bad.json()


def test_task_preview_lists_the_next_runs(api: APIClient) -> None:
    task_id = api.post("/api/tasks", DAILY_REPORT, format="json").json()["id"]
    preview = api.get(f"/api/tasks/{task_id}/preview?count=5").json()
    assert len(preview["runs"]) == 5 and all(
        r.endswith(("-05:00", "-04:00")) for r in preview["runs"]
    )
    assert api.get(f"/api/tasks/{task_id}/preview?count=x").status_code == 400


def test_openapi_schema_and_docs_page(api: APIClient) -> None:
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in (
        "/api/tasks",
        "/api/tasks/{id}",
        "/api/tasks/{id}/run",
        "/api/executions/{id}",
        "/api/schedules/preview",
        "/api/health",
    ):
        assert any(p.rstrip("/") == path for p in paths), (path, sorted(paths))
    assert api.get("/api/docs/").status_code == 200


def test_bulk_pause_resume_delete_only_touch_my_tasks(api: APIClient, other: APIClient) -> None:
    mine = [
        api.post("/api/tasks", {**DAILY_REPORT, "name": f"t{i}"}, format="json").json()["id"]
        for i in range(3)
    ]
    theirs = other.post("/api/tasks", {**DAILY_REPORT, "userId": "mallory"}, format="json").json()[
        "id"
    ]
    paused = api.post("/api/tasks/bulk", {"action": "pause", "ids": [*mine, theirs]}, format="json")
    assert paused.json() == {"count": 3}
    assert ScheduledTask.objects.get(pk=theirs).status == "active"
    assert other.post(
        "/api/tasks/bulk", {"action": "delete", "ids": mine}, format="json"
    ).json() == {"count": 0}
    assert api.post("/api/tasks/bulk", {"action": "resume", "ids": mine}, format="json").json() == {
        "count": 3
    }
    bad = api.post("/api/tasks/bulk", {"action": "explode", "ids": ["x"]}, format="json")
    assert bad.status_code == 400 and {"action", "ids[0]"} <= set(bad.json())
    assert api.post("/api/tasks/bulk", {"action": "delete", "ids": mine}, format="json").json() == {
        "count": 3
    }
    assert list(ScheduledTask.objects.values_list("pk", flat=True)) == [
        __import__("uuid").UUID(theirs)
    ]


def test_stats_count_my_tasks_and_last_day(api: APIClient, other: APIClient) -> None:
    ids = [api.post("/api/tasks", DAILY_REPORT, format="json").json()["id"] for _ in range(2)]
    other.post("/api/tasks", {**DAILY_REPORT, "userId": "mallory"}, format="json")
    api.post(f"/api/tasks/{ids[0]}/pause")
    task = ScheduledTask.objects.get(pk=ids[1])
    TaskExecution.objects.create(task=task, trigger="manual", status="completed")
    TaskExecution.objects.create(task=task, trigger="manual", status="failed")
    TaskExecution.objects.create(task=task, trigger="manual", status="completed")
    stats = api.get("/api/stats").json()
    assert (
        stats["activeTasks"],
        stats["pausedTasks"],
        stats["completedTasks"],
        stats["failedTasks"],
    ) == (1, 1, 0, 0)
    assert stats["executionsLast24h"]["completed"] == 2
    assert stats["executionsLast24h"]["failed"] == 1
    assert stats["successRateLast24h"] == round(2 / 3, 4)
    assert "dueSoon" in stats


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ('{"name": NaN}', None),
        ('{"name": "a\\u0000b", "type": "recurring"}', "name"),
        ('{"name": "x", "description": "\\ud800"}', "description"),
        ("[" * 50000 + "]" * 50000, None),
        ('{"name": "x", "conditions": ' + "[" * 80 + "]" * 80 + "}", "conditions"),
    ],
)
def test_json_a_database_cannot_store_is_a_400(api: APIClient, raw: str, path: str | None) -> None:
    response = api.post("/api/tasks", raw, content_type="application/json")
    assert response.status_code == 400, response.content[:300]
    if path:
        assert any(key.startswith(path) for key in response.json()), response.json()
    assert not ScheduledTask.objects.exists()


def test_a_body_over_the_limit_is_a_413(api: APIClient, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    body = {**DAILY_REPORT, "description": "x" * 20_000}
    response = api.post("/api/tasks", body, format="json")
    assert response.status_code == 413
    assert not ScheduledTask.objects.exists()


def test_listing_costs_the_same_queries_for_5_or_50_tasks(
    api: APIClient, django_assert_num_queries: Any
) -> None:
    """Token lookup, count, one page: no query per task (no N+1)."""

    def create(n: int) -> None:
        for i in range(n):
            api.post("/api/tasks", {**DAILY_REPORT, "name": f"n{i}"}, format="json")

    create(5)
    with django_assert_num_queries(3):
        assert len(api.get("/api/tasks").json()["results"]) == 5
    create(45)
    with django_assert_num_queries(3):
        assert len(api.get("/api/tasks").json()["results"]) == 50


def test_calendar_lists_planned_and_past_occurrences(api: APIClient, other: APIClient) -> None:
    daily = api.post(
        "/api/tasks",
        {**DAILY_REPORT, "schedule": {"cron": "0 9 * * *", "timezone": "America/New_York"}},
        format="json",
    ).json()
    other.post("/api/tasks", {**DAILY_REPORT, "userId": "mallory"}, format="json")
    start = timezone.now().replace(microsecond=0)
    end = start + timedelta(days=7)
    past = TaskExecution.objects.create(
        task=ScheduledTask.objects.get(pk=daily["id"]),
        trigger="scheduled",
        status="completed",
        scheduled_for=start + timedelta(hours=1),
    )
    response = api.get("/api/calendar", {"start": start.isoformat(), "end": end.isoformat()})
    assert response.status_code == 200, response.json()
    entries = response.json()["occurrences"]
    planned = [e for e in entries if e["status"] == "planned"]
    assert len(planned) == 7 and {e["taskId"] for e in entries} == {daily["id"]}
    assert all(e["at"].endswith(("T14:00:00+00:00", "T13:00:00+00:00")) for e in planned)
    assert [e["executionId"] for e in entries if e["status"] == "completed"] == [str(past.pk)]
    assert [e["at"] for e in entries] == sorted(e["at"] for e in entries)
    too_long = api.get(
        "/api/calendar",
        {"start": start.isoformat(), "end": (start + timedelta(days=200)).isoformat()},
    )
    assert too_long.status_code == 400 and "end" in too_long.json()
    assert api.get("/api/calendar", {"start": "soon"}).status_code == 400


def test_openapi_document_validates_without_warnings(tmp_path: Any) -> None:
    import yaml
    from django.core.management import call_command

    target = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))
    schema = yaml.safe_load(target.read_text())
    create = schema["paths"]["/api/tasks"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TaskInput"
    }
    action = schema["components"]["schemas"]["Action"]
    assert action["discriminator"]["propertyName"] == "type"
    assert action["discriminator"]["mapping"]["webhook"] == "#/components/schemas/WebhookAction"
    webhook = schema["components"]["schemas"]["WebhookAction"]
    assert webhook["properties"]["type"]["enum"] == ["webhook"]
    assert set(webhook["required"]) >= {"type", "url"}


def test_staff_may_act_for_another_user(api: APIClient, django_user_model: Any) -> None:
    staff = client_for(django_user_model, "ops", is_staff=True)
    created = staff.post("/api/tasks", {**DAILY_REPORT, "userId": "user-123"}, format="json")
    assert created.status_code == 201 and created.json()["userId"] == "user-123"
    task_id = created.json()["id"]
    assert [t["id"] for t in api.get("/api/tasks").json()["results"]] == [task_id]
    assert staff.get("/api/tasks").json()["results"] == []  # their own, by default
    listed = staff.get("/api/tasks?userId=user-123").json()["results"]
    assert [t["id"] for t in listed] == [task_id]
    assert staff.post(f"/api/tasks/{task_id}/pause").json()["status"] == "paused"
    unknown = staff.post("/api/tasks", {**DAILY_REPORT, "userId": "nobody"}, format="json")
    assert unknown.status_code == 400 and "userId" in unknown.json()
    assert api.get("/api/tasks?userId=ops").status_code == 403


GUIDE_EXAMPLE_1 = {
    "userId": "user-123",
    "name": "Morning Briefing",
    "type": "recurring",
    "schedule": {"cron": "0 8 * * 1-5", "timezone": "America/New_York"},
    "action": {
        "type": "ai-prompt",
        "prompt": "Generate a morning briefing with: 1) Top news "
        "headlines 2) Weather 3) Calendar events 4) To-do list priorities",
    },
    "notification": {"onSuccess": True, "channels": ["email"]},
}


@pytest.mark.parametrize("body", [GUIDE_CREATE, GUIDE_EXAMPLE_1], ids=["create", "example-1"])
def test_the_guides_ai_prompt_requests_work_as_written(api: APIClient, body: Any) -> None:
    response = api.post("/api/tasks", body, format="json")
    assert response.status_code == 201, response.json()
    task = response.json()
    assert task["action"] == body["action"] and task["schedule"] == body["schedule"]
    assert task["notification"] == body["notification"]


def test_create_run_now_and_preview_are_throttled_per_user(
    api: APIClient, other: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rest_framework.throttling import ScopedRateThrottle

    monkeypatch.setattr(
        ScopedRateThrottle,
        "THROTTLE_RATES",
        {"task-write": "2/min", "task-run": "1/min", "preview": "1/min"},
    )
    codes = [api.post("/api/tasks", DAILY_REPORT, format="json").status_code for _ in range(3)]
    assert codes == [201, 201, 429]
    assert ScheduledTask.objects.count() == 2
    task_id = ScheduledTask.objects.first().pk  # type: ignore[union-attr]
    runs = [api.post(f"/api/tasks/{task_id}/run").status_code for _ in range(2)]
    assert runs == [202, 429]
    preview = {"schedule": {"cron": "0 9 * * *"}, "count": 3}
    previews = [
        api.post("/api/schedules/preview", preview, format="json").status_code for _ in range(2)
    ]
    assert previews == [200, 429]
    # another user has budgets of their own
    assert (
        other.post("/api/tasks", DAILY_REPORT | {"userId": "mallory"}, format="json").status_code
        == 201
    )


def test_a_pause_remembers_why_until_resumed(api: APIClient) -> None:
    task_id = api.post("/api/tasks", DAILY_REPORT, format="json").json()["id"]
    assert api.get(f"/api/tasks/{task_id}").json()["pauseReason"] is None
    paused = api.post(f"/api/tasks/{task_id}/pause", {"reason": "vendor outage"}, format="json")
    assert paused.status_code == 200
    assert (paused.json()["status"], paused.json()["pauseReason"]) == ("paused", "vendor outage")
    assert api.get(f"/api/tasks/{task_id}").json()["pauseReason"] == "vendor outage"
    resumed = api.post(f"/api/tasks/{task_id}/resume").json()
    assert (resumed["status"], resumed["pauseReason"]) == ("active", None)
    assert api.post(f"/api/tasks/{task_id}/pause").json()["pauseReason"] is None  # no body
    bad = api.post(f"/api/tasks/{task_id}/pause", {"reason": "x" * 501}, format="json")
    assert bad.status_code == 400 and "reason" in bad.json()
    unknown = api.post(f"/api/tasks/{task_id}/pause", {"why": "x"}, format="json")
    assert unknown.status_code == 400
    ignored = api.put(f"/api/tasks/{task_id}", {"pauseReason": "sneaky"}, format="json")
    assert ignored.status_code in (200, 400)
    assert ScheduledTask.objects.get(pk=task_id).pause_reason == ""
