"""Secrets at rest (issue 8): secret action headers sealed with FIELD_ENCRYPTION_KEYS and
masked in every answer after the creating one; API tokens stored as digests; and a real
``pg_dump`` of the database that holds every kind of secret shows none of them."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tasks_app import sealed
from tasks_app.auth import token_digest, token_issue
from tasks_app.models import ScheduledTask, TaskExecution
from tasks_app.services import dispatch
from tasks_app.tasks import run_task
from tests.api_clients import client_for
from tests.http_receiver import Receiver

pytestmark = pytest.mark.django_db

BEARER = "Bearer s3cr3t-bearer-7f1e"
API_KEY = "k3y-value-91ab"
STEP_TOKEN = "step-t0ken-55cd"


def webhook_task(url: str = "https://example.com/hook") -> dict[str, Any]:
    return {
        "name": "with secrets",
        "type": "trigger",
        "trigger": {"type": "event", "config": {"event": "go"}},
        "action": {
            "type": "chain",
            "tasks": [
                {
                    "type": "webhook",
                    "url": url,
                    "headers": {"Authorization": BEARER, "X-Api-Key": API_KEY, "X-Trace": "t-1"},
                },
                {
                    "type": "web-scrape",
                    "url": url,
                    "selector": "p",
                    "headers": {"X-Auth-Token": STEP_TOKEN},
                },
            ],
        },
    }


@pytest.fixture
def api(django_user_model: Any) -> APIClient:
    return client_for(django_user_model, "owner")


def stored_text(task_id: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT action FROM scheduled_tasks WHERE id = %s",
            [task_id.replace("-", "") if connection.vendor == "sqlite" else task_id],
        )
        return str(cursor.fetchone()[0])


def test_secret_headers_are_sealed_and_masked_after_creation(api: APIClient) -> None:
    created = api.post("/api/tasks", webhook_task(), format="json")
    assert created.status_code == 201, created.json()
    first = created.json()["action"]["tasks"][0]["headers"]
    assert first == {"Authorization": BEARER, "X-Api-Key": API_KEY, "X-Trace": "t-1"}
    task_id = created.json()["id"]
    raw = stored_text(task_id)
    for secret in (BEARER, API_KEY, STEP_TOKEN):
        assert secret not in raw
    assert raw.count(sealed.SEALED) == 3 and "t-1" in raw
    shown = api.get(f"/api/tasks/{task_id}").json()["action"]["tasks"]
    assert shown[0]["headers"] == {
        "Authorization": sealed.MASK,
        "X-Api-Key": sealed.MASK,
        "X-Trace": "t-1",
    }
    assert shown[1]["headers"] == {"X-Auth-Token": sealed.MASK}
    listed = api.get("/api/tasks").content.decode()
    assert BEARER not in listed and API_KEY not in listed


def test_sending_the_mask_back_keeps_the_secret_and_a_new_value_replaces_it(
    api: APIClient,
) -> None:
    task_id = api.post("/api/tasks", webhook_task(), format="json").json()["id"]
    action = api.get(f"/api/tasks/{task_id}").json()["action"]  # masked
    action["tasks"][0]["headers"]["X-Trace"] = "t-2"
    assert api.patch(f"/api/tasks/{task_id}", {"action": action}, format="json").status_code == 200
    kept = sealed.unsealed(ScheduledTask.objects.get(pk=task_id).action)
    assert kept["tasks"][0]["headers"] == {
        "Authorization": BEARER,
        "X-Api-Key": API_KEY,
        "X-Trace": "t-2",
    }
    assert kept["tasks"][1]["headers"] == {"X-Auth-Token": STEP_TOKEN}
    action["tasks"][0]["headers"]["Authorization"] = "Bearer rotated"
    api.patch(f"/api/tasks/{task_id}", {"action": action}, format="json")
    changed = sealed.unsealed(ScheduledTask.objects.get(pk=task_id).action)
    assert changed["tasks"][0]["headers"]["Authorization"] == "Bearer rotated"
    # A rename leaves the sealed values as they are.
    before = ScheduledTask.objects.get(pk=task_id).action
    api.patch(f"/api/tasks/{task_id}", {"name": "renamed"}, format="json")
    assert ScheduledTask.objects.get(pk=task_id).action == before


def test_a_mask_with_nothing_stored_behind_it_and_a_two_line_secret_are_refused(
    api: APIClient,
) -> None:
    body = webhook_task()
    body["action"]["tasks"][0]["headers"]["Authorization"] = sealed.MASK
    answer = api.post("/api/tasks", body, format="json")
    assert answer.status_code == 400
    assert "action.tasks[0].headers.Authorization" in answer.json()
    body = webhook_task()
    body["action"]["tasks"][0]["headers"]["Authorization"] = "Bearer x\r\nX-Evil: 1"
    answer = api.post("/api/tasks", body, format="json")
    assert answer.status_code == 400, answer.json()
    assert not ScheduledTask.objects.exists()


def test_the_worker_sends_the_secret_itself(
    api: APIClient, receiver: Receiver, egress_allow_loopback: None
) -> None:
    body = webhook_task(f"{receiver.url}/hook")
    body["action"] = body["action"]["tasks"][0]
    task_id = api.post("/api/tasks", body, format="json").json()["id"]
    execution = dispatch.task_run_now(task=ScheduledTask.objects.get(pk=task_id))
    outcome = run_task.apply(kwargs={"execution_id": str(execution.pk), "attempt": 1}).get()
    assert outcome["outcome"] == "completed"
    [request] = receiver.received("/hook")
    assert request.headers["Authorization"] == BEARER
    assert request.headers["X-Api-Key"] == API_KEY
    stored = TaskExecution.objects.get(pk=execution.pk)
    assert BEARER not in json.dumps(stored.result) + json.dumps(stored.logs)


def test_rotation_re_seals_action_headers_under_the_newest_key(
    api: APIClient, settings: Any
) -> None:
    task_id = api.post("/api/tasks", webhook_task(), format="json").json()["id"]
    old = list(settings.FIELD_ENCRYPTION_KEYS)
    new = Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new, *old]
    call_command("rotate_encryption_keys", stdout=open("/dev/null", "w"))  # noqa: SIM115
    settings.FIELD_ENCRYPTION_KEYS = [new]  # the old key is gone
    action = sealed.unsealed(ScheduledTask.objects.get(pk=task_id).action)
    assert action["tasks"][0]["headers"]["Authorization"] == BEARER


# --- API tokens -------------------------------------------------------------------------


def test_tokens_are_stored_as_digests(django_user_model: Any) -> None:
    user = django_user_model.objects.create(username="t")
    key = token_issue(user)
    stored = Token.objects.get(user=user).key
    assert stored == token_digest(key) and stored != key
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/api/tasks").status_code == 200
    client.credentials(HTTP_AUTHORIZATION=f"Token {stored}")  # a leaked table row
    assert client.get("/api/tasks").status_code == 401


def test_drf_create_token_shows_a_key_once(django_user_model: Any, capsys: Any) -> None:
    django_user_model.objects.create(username="cli")
    call_command("drf_create_token", "cli")
    first = capsys.readouterr().out.split()[2]
    with pytest.raises(CommandError, match="cannot be shown again"):
        call_command("drf_create_token", "cli")
    call_command("drf_create_token", "cli", "-r")
    second = capsys.readouterr().out.split()[2]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {first}")
    assert client.get("/api/tasks").status_code == 401
    client.credentials(HTTP_AUTHORIZATION=f"Token {second}")
    assert client.get("/api/tasks").status_code == 200


# --- the whole database, dumped ---------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_database_dump_shows_no_secret(django_user_model: Any) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("pg_dump needs PostgreSQL")
    user = django_user_model.objects.create(username="dumped")
    key = token_issue(user)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api.post("/api/tasks", webhook_task(), format="json").status_code == 201
    trigger = api.post(
        "/api/tasks",
        {
            "name": "hook",
            "type": "trigger",
            "trigger": {"type": "webhook", "config": {}},
            "action": {"type": "webhook", "url": "https://example.com/x"},
        },
        format="json",
    ).json()
    hook_secret = api.post(f"/api/tasks/{trigger['id']}/webhook", format="json").json()["secret"]
    google = {
        "type": "authorized_user",
        "client_id": "1234.apps.googleusercontent.com",
        "client_secret": "g00gle-client-secret-3344",
        "refresh_token": "1//g00gle-refresh-token-7788",
    }
    assert api.put("/api/integrations/google", google, format="json").status_code in (200, 201)
    settings_dict = connection.settings_dict
    dump = subprocess.run(
        [
            "pg_dump",
            "--data-only",
            "-h",
            settings_dict["HOST"] or "127.0.0.1",
            "-p",
            str(settings_dict["PORT"] or 5432),
            "-U",
            settings_dict["USER"],
            settings_dict["NAME"],
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "scheduled_tasks" in dump and "task_webhooks" in dump  # the dump is real
    for secret in (
        key,
        BEARER,
        API_KEY,
        STEP_TOKEN,
        hook_secret,
        hook_secret.removeprefix("whsec_"),
        google["client_secret"],
        google["refresh_token"],
    ):
        assert secret not in dump, f"{secret[:6]}… is in the dump"


def test_the_migration_seals_what_was_stored_before(django_user_model: Any) -> None:
    import importlib

    from django.apps import apps

    migration = importlib.import_module("tasks_app.migrations.0008_seal_existing_secrets")
    user = django_user_model.objects.create(username="old")
    legacy_key = Token.generate_key()
    Token.objects.create(user=user, key=legacy_key)  # as DRF stored it
    task = ScheduledTask.objects.create(
        owner=user,
        name="old",
        type="trigger",
        trigger={"type": "event", "config": {"event": "x"}},
        action={"type": "webhook", "url": "https://example.com/h"},
    )
    plain = {
        "type": "webhook",
        "url": "https://example.com/h",
        "headers": {"Authorization": BEARER},
    }
    ScheduledTask.objects.filter(pk=task.pk).update(action=plain)  # bypasses sealing
    migration.seal_existing(apps, None)
    assert BEARER not in stored_text(str(task.pk))
    assert sealed.unsealed(ScheduledTask.objects.get(pk=task.pk).action) == plain
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {legacy_key}")  # the old key still works
    assert client.get("/api/tasks").status_code == 200
    assert not Token.objects.filter(key=legacy_key).exists()


def test_a_kept_secret_is_not_sent_to_a_new_host(api: APIClient) -> None:
    task_id = api.post("/api/tasks", webhook_task(), format="json").json()["id"]
    action = api.get(f"/api/tasks/{task_id}").json()["action"]
    action["tasks"][0]["url"] = "https://attacker.example/collect"
    answer = api.patch(f"/api/tasks/{task_id}", {"action": action}, format="json")
    assert answer.status_code == 400, answer.json()
    assert "host changed" in str(answer.json()), answer.json()
    stored = sealed.unsealed(ScheduledTask.objects.get(pk=task_id).action)
    assert stored["tasks"][0]["url"] == "https://example.com/hook"


def test_the_admin_offers_no_token_pages(django_user_model: Any) -> None:
    from django.test import Client

    client = Client()
    client.force_login(
        django_user_model.objects.create(username="root", is_staff=True, is_superuser=True)
    )
    index = client.get("/admin/").content.decode()
    assert "authtoken" not in index
    assert client.get("/admin/authtoken/tokenproxy/").status_code == 404
