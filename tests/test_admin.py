"""The admin: tasks made and edited through its forms are validated and scheduled;
beat rows show up under django-celery-beat's pages; bulk actions work."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from tasks_app.models import ExecutionTrigger, ScheduledTask, TaskExecution, TaskStatus
from tasks_app.services import definitions

pytestmark = pytest.mark.django_db

ADD_URL = "/admin/tasks_app/scheduledtask/add/"
LIST_URL = "/admin/tasks_app/scheduledtask/"


@pytest.fixture
def operator(client: Any, django_user_model: Any) -> Any:
    user = django_user_model.objects.create_superuser(username="ops", email="", password=None)
    client.force_login(user)
    return user


def form(operator: Any, **overrides: Any) -> dict[str, Any]:
    at = timezone.now() + timedelta(hours=2)
    data = {
        "owner": operator.pk,
        "name": "from the admin",
        "description": "",
        "type": "one-time",
        "cron": "",
        "timezone": "UTC",
        "run_at_0": at.strftime("%Y-%m-%d"),
        "run_at_1": at.strftime("%H:%M:%S"),
        "trigger": "null",
        "action": json.dumps({"type": "webhook", "url": "https://example.com/hook"}),
        "conditions": "[]",
        "retry_policy": "{}",
        "notification": "{}",
        "misfire_policy": "runOnce",
        "catchup_window_seconds": "3600",
        "overlap_policy": "skip",
        "jitter_seconds": "0",
        "executions-TOTAL_FORMS": "0",
        "executions-INITIAL_FORMS": "0",
        "executions-MIN_NUM_FORMS": "0",
        "executions-MAX_NUM_FORMS": "0",
    }
    data.update(overrides)
    return data


def test_one_time_task_made_in_the_admin_gets_its_beat_row(client: Any, operator: Any) -> None:
    assert client.get(ADD_URL).status_code == 200
    response = client.post(ADD_URL, form(operator))
    assert response.status_code == 302, response.content.decode()[:3000]
    task = ScheduledTask.objects.get(name="from the admin")
    periodic = PeriodicTask.objects.get(pk=task.periodic_task_id)
    assert periodic.one_off and periodic.enabled
    assert periodic.clocked.clocked_time == task.run_at
    beat_page = client.get("/admin/django_celery_beat/periodictask/")
    assert f"scheduled-task:{task.pk}" in beat_page.content.decode()
    page = client.get(f"{LIST_URL}{task.pk}/change/").content.decode()
    assert "History" in page and f"scheduled-task:{task.pk}" in page


def test_wrong_cron_is_refused_on_the_form(client: Any, operator: Any) -> None:
    response = client.post(
        ADD_URL, form(operator, type="recurring", cron="61 * * * *", run_at_0="", run_at_1="")
    )
    assert response.status_code == 200
    assert "schedule.cron: is not a valid cron expression" in response.content.decode()
    assert not ScheduledTask.objects.exists() and not PeriodicTask.objects.exists()


def test_wrong_action_config_is_refused_on_the_form(client: Any, operator: Any) -> None:
    response = client.post(
        ADD_URL, form(operator, action=json.dumps({"type": "run-code", "code": "print(1)"}))
    )
    assert response.status_code == 200
    assert "action.language: Field required" in response.content.decode()
    assert not ScheduledTask.objects.exists()


def test_bulk_pause_resume_and_run_now(
    client: Any, operator: Any, django_capture_on_commit_callbacks: Any
) -> None:
    client.post(
        ADD_URL,
        form(
            operator,
            type="recurring",
            cron="0 9 * * 1-5",
            timezone="America/New_York",
            run_at_0="",
            run_at_1="",
        ),
    )
    task = ScheduledTask.objects.get()
    client.post(LIST_URL, {"action": "pause", "_selected_action": [task.pk]})
    task.refresh_from_db()
    assert task.status == TaskStatus.PAUSED
    assert PeriodicTask.objects.get(pk=task.periodic_task_id).enabled is False
    client.post(LIST_URL, {"action": "resume", "_selected_action": [task.pk]})
    task.refresh_from_db()
    assert task.status == TaskStatus.ACTIVE
    assert PeriodicTask.objects.get(pk=task.periodic_task_id).enabled is True
    with django_capture_on_commit_callbacks() as callbacks:
        client.post(LIST_URL, {"action": "run_now", "_selected_action": [task.pk]})
    execution = TaskExecution.objects.get(task=task)
    assert execution.trigger == ExecutionTrigger.MANUAL and len(callbacks) == 1


def test_execution_pages_are_read_only(client: Any, operator: Any) -> None:
    client.post(ADD_URL, form(operator))
    execution = TaskExecution.objects.create(
        task=ScheduledTask.objects.get(), trigger=ExecutionTrigger.MANUAL
    )
    page = client.get(f"/admin/tasks_app/taskexecution/{execution.pk}/change/")
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    assert client.get("/admin/tasks_app/taskexecution/add/").status_code == 403


def test_beat_rows_of_tasks_are_read_only_in_beats_admin(client: Any, operator: Any) -> None:
    client.post(
        ADD_URL, form(operator, type="recurring", cron="0 9 * * *", run_at_0="", run_at_1="")
    )
    task = ScheduledTask.objects.get()
    url = f"/admin/django_celery_beat/periodictask/{task.periodic_task_id}/change/"
    page = client.get(url).content.decode()
    assert 'name="_save"' not in page
    assert client.post(url.replace("change", "delete"), {"post": "yes"}).status_code == 403
    client.post(
        "/admin/django_celery_beat/periodictask/",
        {"action": "disable_tasks", "_selected_action": [task.periodic_task_id]},
    )
    assert PeriodicTask.objects.get(pk=task.periodic_task_id).enabled is True


def test_webhook_secrets_never_show_in_the_admin(client: Any, operator: Any) -> None:
    from datetime import timedelta as _td

    from tasks_app.services import triggers

    task = ScheduledTask.objects.create(
        owner=operator,
        name="hooked",
        type="trigger",
        trigger={"type": "webhook", "config": {}},
        action={"type": "webhook", "url": "https://example.com/x"},
    )
    hook, first = triggers.webhook_create(task=task)
    second = triggers.webhook_rotate(webhook=hook, grace=_td(hours=1))
    pages = [
        client.get("/admin/tasks_app/taskwebhook/").content.decode(),
        client.get(f"/admin/tasks_app/taskwebhook/{hook.pk}/change/").content.decode(),
    ]
    for page in pages:
        assert hook.webhook_id in page
        assert first not in page and second not in page


# --- issue 7: lists, filters, previews, secrets, executions ---------------------------------

MASK = "••••••"
EXECUTIONS_URL = "/admin/tasks_app/taskexecution/"
HOOK = {"type": "webhook", "url": "https://api.example.com/hook"}
SECRETS = ("QSECRET123", "HSECRET456", "KSECRET789", "RSECRET1", "RSECRET2", "LSECRET3", "ESECRET4")


def make(owner: Any, name: str, **fields: Any) -> ScheduledTask:
    fields.setdefault("type", "recurring")
    if fields["type"] == "recurring":
        fields.setdefault("cron", "0 9 * * *")
    fields.setdefault("action", HOOK)
    return ScheduledTask.objects.create(owner=owner, name=name, **fields)


def ran(task: ScheduledTask, status: str, minutes_ago: int, **fields: Any) -> TaskExecution:
    execution = TaskExecution.objects.create(
        task=task, trigger=ExecutionTrigger.MANUAL, status=status, **fields
    )
    queued = timezone.now() - timedelta(minutes=minutes_ago)
    TaskExecution.objects.filter(pk=execution.pk).update(queued_at=queued)
    return execution


def row_of(page: str, name: str) -> str:
    """The changelist row that shows the task ``name``."""
    return next(row for row in page.split("<tr") if f">{name}<" in row)


def test_list_shows_readable_schedules_and_last_outcome_in_bounded_queries(
    client: Any, operator: Any, django_assert_max_num_queries: Any
) -> None:
    weekdays = make(operator, "weekdays", cron="0 9 * * 1-5", timezone="America/New_York")
    make(
        operator,
        "once",
        type="one-time",
        run_at=datetime(2030, 12, 1, 8, tzinfo=UTC),
        timezone="Europe/Paris",
    )
    make(operator, "hooked", type="trigger", trigger={"type": "webhook", "config": {}})
    make(operator, "mailed", type="trigger", trigger={"type": "email", "config": {}})
    make(
        operator,
        "evented",
        type="trigger",
        trigger={"type": "event", "config": {"event": "invoice.paid"}},
    )
    ran(weekdays, "completed", minutes_ago=30)
    ran(weekdays, "failed", minutes_ago=5)  # the latest
    for index in range(15):
        ran(make(operator, f"filler-{index}"), "completed", minutes_ago=index + 1)
    with django_assert_max_num_queries(12):  # not one query per row (20 rows)
        page = client.get(LIST_URL).content.decode()
    assert "At 09:00 AM, Monday through Friday (America/New_York)" in row_of(page, "weekdays")
    assert "Once, at 2030-12-01 09:00 (Europe/Paris)" in row_of(page, "once")
    assert "On webhook" in row_of(page, "hooked")
    assert "On email" in row_of(page, "mailed")
    assert "On event invoice.paid" in row_of(page, "evented")
    assert "outcome-failed" in row_of(page, "weekdays")
    assert "outcome-completed" not in row_of(page, "weekdays")
    assert "outcome-completed" in row_of(page, "filler-3")
    assert "outcome-" not in row_of(page, "once")  # never ran


def test_list_filters_and_search(client: Any, operator: Any, django_user_model: Any) -> None:
    alice = django_user_model.objects.create_user(username="alice-owner")
    make(operator, "ops-hook", description="pings the partner")
    paused = make(
        alice,
        "alice-mail",
        action={"type": "send-email", "to": ["a@example.com"], "subject": "s", "body": "b"},
    )
    definitions.task_pause(task=paused)
    make(alice, "alice-once", type="one-time", run_at=timezone.now() + timedelta(days=1))

    def names(query: str) -> set[str]:
        page = client.get(f"{LIST_URL}?{query}")
        assert page.status_code == 200, query
        return {task.name for task in page.context["cl"].result_list}

    assert names("status__exact=paused") == {"alice-mail"}
    assert names("type__exact=one-time") == {"alice-once"}
    assert names("action_type=send-email") == {"alice-mail"}
    assert names("action_type=webhook") == {"ops-hook", "alice-once"}
    assert names(f"owner__id__exact={alice.pk}") == {"alice-mail", "alice-once"}
    assert names("q=alice-owner") == {"alice-mail", "alice-once"}  # the owner's username
    assert names("q=partner") == {"ops-hook"}  # the description


def test_staff_operators_see_every_task_and_execution(client: Any, django_user_model: Any) -> None:
    owner = django_user_model.objects.create_user(username="someone")
    task = make(owner, "not-mine")
    execution = ran(task, "completed", minutes_ago=1)
    staff = django_user_model.objects.create_user(username="staff", is_staff=True)
    client.force_login(staff)
    assert "not-mine" in client.get(LIST_URL).content.decode()
    assert client.get(f"{EXECUTIONS_URL}{execution.pk}/change/").status_code == 200
    assert (
        client.post(f"{EXECUTIONS_URL}{execution.pk}/delete/", {"post": "yes"}).status_code == 403
    )
    assert TaskExecution.objects.filter(pk=execution.pk).exists()


def test_bulk_delete_goes_through_the_service_and_removes_beat_rows(
    client: Any, operator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks = [make(operator, "first"), make(operator, "second")]
    beat_rows = [task.periodic_task_id for task in tasks]
    assert PeriodicTask.objects.filter(pk__in=beat_rows).count() == 2
    deleted: list[Any] = []
    original = definitions.task_delete

    def spy(*, task: ScheduledTask) -> None:
        deleted.append(task.pk)
        original(task=task)

    monkeypatch.setattr(definitions, "task_delete", spy)
    response = client.post(
        LIST_URL,
        {"action": "delete_selected", "_selected_action": [t.pk for t in tasks], "post": "yes"},
    )
    assert response.status_code == 302
    assert not ScheduledTask.objects.exists()
    assert not PeriodicTask.objects.filter(pk__in=beat_rows).exists()
    assert sorted(deleted) == sorted(t.pk for t in tasks)


def change_form(task: ScheduledTask, **overrides: Any) -> dict[str, Any]:
    """The change form as the page renders it (JSON fields as shown, masked)."""
    data = form(
        task.owner,
        name=task.name,
        type=task.type,
        cron=task.cron,
        timezone=task.timezone,
        run_at_0="",
        run_at_1="",
    )
    data.update(overrides)
    return data


def test_wrong_cron_on_the_change_form_shows_on_the_cron_field(client: Any, operator: Any) -> None:
    task = make(operator, "edit-me", cron="0 9 * * *")
    crontab = PeriodicTask.objects.get(pk=task.periodic_task_id).crontab
    url = f"{LIST_URL}{task.pk}/change/"
    response = client.post(url, change_form(task, cron="61 * * * *", name="renamed"))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "cron" in errors and "schedule.cron" in errors["cron"][0]
    html = response.content.decode()
    cron_row = html[html.index('class="form-row errors field-cron') :]
    assert "schedule.cron: is not a valid cron expression" in cron_row[:2000]
    task.refresh_from_db()
    assert (task.cron, task.name) == ("0 9 * * *", "edit-me")
    assert PeriodicTask.objects.get(pk=task.periodic_task_id).crontab == crontab


def test_change_page_groups_fields_pretty_json_and_next_runs_with_dst(
    client: Any, operator: Any
) -> None:
    task = make(
        operator,
        "nightly",
        cron="30 2 * * *",
        timezone="America/New_York",
        start_at=datetime(2030, 3, 7, tzinfo=UTC),
    )
    response = client.get(f"{LIST_URL}{task.pk}/change/")
    html = response.content.decode()
    for title in ("Definition", "Schedule", "Schedule controls", "Action", "Policies", "Runtime"):
        assert f">{title}</h2>" in html
    shown = response.context["adminform"].form["action"].value()
    assert shown.startswith('{\n  "') and '\n  "type": "webhook"' in shown  # indented
    assert "At 02:30 AM (America/New_York)" in html
    assert "Sat 2030-03-09 02:30 -0500" in html
    assert "DST shifted" in html and "02:30 does not exist on 2030-03-10" in html
    assert html.count("<li>Sun 2030-03-1") >= 1


SECRET_ACTION = {
    "type": "webhook",
    "url": "https://api.example.com/hook?api_key=QSECRET123&page=1",
    "headers": {
        "Authorization": "Bearer HSECRET456",
        "X-Api-Key": "KSECRET789",
        "Accept": "application/json",
    },
}


def test_secrets_are_masked_on_every_page_and_survive_an_edit_that_keeps_the_mask(
    client: Any, operator: Any
) -> None:
    from tasks_app import sealed

    task = make(operator, "secretive", action=SECRET_ACTION)
    ran(
        task,
        "failed",
        minutes_ago=1,
        result={"url": "https://x.example/?token=RSECRET1", "headers": {"Cookie": "RSECRET2"}},
        logs=[
            {"at": timezone.now().isoformat(), "level": "info", "message": "GET /?secret=LSECRET3"}
        ],
        error="refused at https://x.example/a?password=ESECRET4",
        payload={"api_key": "KSECRET789", "count": 2},
    )
    execution = TaskExecution.objects.get()
    change_url = f"{LIST_URL}{task.pk}/change/"
    pages = {
        "list": client.get(LIST_URL),
        "change": client.get(change_url),
        "executions": client.get(EXECUTIONS_URL),
        "execution": client.get(f"{EXECUTIONS_URL}{execution.pk}/change/"),
    }
    for name, response in pages.items():
        html = response.content.decode()
        assert response.status_code == 200, name
        for secret in SECRETS:
            assert secret not in html, (name, secret)
    assert MASK in pages["change"].content.decode() and MASK in pages["execution"].content.decode()
    assert "application/json" in pages["change"].content.decode()  # not every header is secret

    shown = pages["change"].context["adminform"].form["action"].value()
    assert '"Authorization": "••••••"' in shown and "api_key=••••••" in shown
    response = client.post(change_url, change_form(task, action=shown, name="still secretive"))
    assert response.status_code == 302, response.content.decode()[:3000]
    task.refresh_from_db()
    assert task.name == "still secretive"
    action = sealed.unsealed(task.action)
    assert action["headers"] == SECRET_ACTION["headers"]
    assert action["url"] == SECRET_ACTION["url"]

    # The mask sent towards another host is refused: the secret must be typed again.
    elsewhere = shown.replace("api.example.com", "evil.example.net")
    response = client.post(change_url, change_form(task, action=elsewhere))
    assert response.status_code == 200
    assert "action" in response.context["adminform"].form.errors
    task.refresh_from_db()
    assert sealed.unsealed(task.action)["url"] == SECRET_ACTION["url"]


def test_execution_page_shows_logs_steps_result_timing_and_report_link(
    client: Any, operator: Any
) -> None:
    task = make(operator, "chained", action={"type": "chain", "tasks": [HOOK, HOOK]})
    report_id = "5b0d6f6e-3c39-4b59-9d51-0a8f8f3ad7a1"
    started = timezone.now() - timedelta(seconds=5)
    execution = ran(
        task,
        "failed",
        minutes_ago=1,
        started_at=started,
        completed_at=started + timedelta(seconds=3),
        duration_ms=3000,
        attempt=2,
        worker="host-7:4242",
        result={"reportId": report_id, "nested": {"rows": [1, 2]}},
        logs=[
            {"at": "2030-01-02T03:04:05+00:00", "level": "info", "message": "chain started"},
            {"at": "2030-01-02T03:04:07+00:00", "level": "error", "message": "step 2 blew up"},
        ],
        steps=[
            {
                "index": 0,
                "type": "webhook",
                "status": "completed",
                "attempt": 1,
                "durationMs": 1200,
                "result": {"status": 200, "body": "pong"},
            },
            {
                "index": 1,
                "type": "webhook",
                "status": "failed",
                "attempt": 2,
                "durationMs": 40,
                "error": "upstream said 500",
            },
        ],
    )
    html = client.get(f"{EXECUTIONS_URL}{execution.pk}/change/").content.decode()
    assert "<th>time</th><th>level</th><th>message</th>" in html
    assert "Wed 2030-01-02 03:04 +0000" in html and "step 2 blew up" in html
    assert "<th>step</th><th>type</th><th>status</th>" in html
    assert "1.2 s" in html and "upstream said 500" in html and "pong" in html
    assert "&quot;nested&quot;: {" in html  # the result, pretty-printed
    assert f"/api/reports/{report_id}/download?format=html" in html
    assert "host-7:4242" in html and "3.0 s" in html
    assert 'name="_save"' not in html


def test_superusers_may_delete_executions(client: Any, operator: Any) -> None:
    execution = ran(make(operator, "x"), "completed", minutes_ago=1)
    response = client.post(f"{EXECUTIONS_URL}{execution.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not TaskExecution.objects.exists()


def test_mask_helpers_round_trip() -> None:
    from tasks_app.admin import masked, unmasked

    stored = {
        "type": "chain",
        "tasks": [
            {
                "type": "webhook",
                "url": "https://a.example/x?token=T1&q=1",
                "headers": {"X-Token": "T2"},
            },
            {"type": "webhook", "url": "https://b.example/y", "headers": {"Authorization": "T3"}},
        ],
        "tokens": 5,
    }
    shown = masked(stored)
    assert "T1" not in str(shown) and "T2" not in str(shown) and "T3" not in str(shown)
    assert shown["tokens"] == 5  # numbers under secret-looking names are not secrets
    assert unmasked(shown, stored) == stored
    edited = json.loads(json.dumps(shown))
    edited["tasks"][0]["url"] = "https://a.example/z?token=" + MASK + "&q=2"
    edited["tasks"][1]["headers"]["Accept"] = "text/plain"
    back = unmasked(edited, stored)
    assert back["tasks"][0]["url"] == "https://a.example/z?token=T1&q=2"
    assert back["tasks"][0]["headers"] == {"X-Token": "T2"}
    assert back["tasks"][1]["headers"] == {"Authorization": "T3", "Accept": "text/plain"}
    swapped = {**shown, "tasks": [shown["tasks"][1], shown["tasks"][0]]}
    assert MASK in json.dumps(unmasked(swapped, stored), ensure_ascii=False)  # not restored
