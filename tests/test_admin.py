"""The admin: tasks made and edited through its forms are validated and scheduled;
beat rows show up under django-celery-beat's pages; bulk actions work."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from tasks_app.models import ExecutionTrigger, ScheduledTask, TaskExecution, TaskStatus

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
