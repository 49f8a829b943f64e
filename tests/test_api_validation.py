"""A table of wrong inputs: each is a 400 (or 413) naming the field, and nothing is stored.
Runs on the suite's database; test_validation_table_on_sqlite repeats it on SQLite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django_celery_beat.models import PeriodicTask
from rest_framework.test import APIClient

from tasks_app.models import ScheduledTask
from tests.api_clients import client_for

VALID = {
    "name": "Valid",
    "type": "recurring",
    "schedule": {"cron": "0 9 * * *", "timezone": "UTC"},
    "action": {"type": "webhook", "url": "https://example.com/hook"},
}


def make(**changes: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(VALID))
    for key, value in changes.items():
        if value is ...:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def action(**fields: Any) -> dict[str, Any]:
    return {"type": "webhook", "url": "https://example.com/hook", **fields}


CASES: list[tuple[str, Any, str]] = [
    ("not an object", ["x"], "(body)"),
    ("no name", make(name=...), "name"),
    ("empty name", make(name="  "), "name"),
    ("name too long", make(name="x" * 201), "name"),
    ("name not text", make(name=5), "name"),
    ("description not text", make(description=["x"]), "description"),
    ("no type", make(type=...), "type"),
    ("unknown type", make(type="sometimes"), "type"),
    ("unknown field", make(colour="blue"), "colour"),
    ("schedule not object", make(schedule="daily"), "schedule"),
    ("unknown schedule field", make(schedule={"cron": "0 9 * * *", "every": 2}), "schedule.every"),
    ("no cron", make(schedule={"timezone": "UTC"}), "schedule.cron"),
    ("cron not text", make(schedule={"cron": 5}), "schedule.cron"),
    ("cron 4 fields", make(schedule={"cron": "0 9 * *"}), "schedule.cron"),
    ("cron 6 fields", make(schedule={"cron": "0 0 9 * * *"}), "schedule.cron"),
    ("cron minute 60", make(schedule={"cron": "60 9 * * *"}), "schedule.cron"),
    ("cron hour 24", make(schedule={"cron": "0 24 * * *"}), "schedule.cron"),
    ("cron never fires", make(schedule={"cron": "0 0 30 2 *"}), "schedule.cron"),
    ("cron words", make(schedule={"cron": "every day at nine"}), "schedule.cron"),
    *(
        (f"schedule {key}={value!r}", make(schedule={"cron": "0 9 * * *", key: value}), path)
        for key, value, path in (
            ("misfirePolicy", "sometimes", "schedule.misfirePolicy"),
            ("misfirePolicy", 1, "schedule.misfirePolicy"),
            ("overlapPolicy", "replace", "schedule.overlapPolicy"),
            ("catchupWindowSeconds", 10, "schedule.catchupWindowSeconds"),
            ("catchupWindowSeconds", "1h", "schedule.catchupWindowSeconds"),
            ("jitterSeconds", 901, "schedule.jitterSeconds"),
            ("jitterSeconds", -1, "schedule.jitterSeconds"),
            ("jitterSeconds", True, "schedule.jitterSeconds"),
            ("graceSeconds", 5, "schedule.graceSeconds"),
            ("startAt", "next monday", "schedule.startAt"),
            ("endAt", "2020-01-01T00:00:00Z", "schedule.endAt"),
        )
    ),
    (
        "window backwards",
        make(
            schedule={
                "cron": "0 9 * * *",
                "startAt": "2040-02-01T00:00:00Z",
                "endAt": "2040-01-01T00:00:00Z",
            }
        ),
        "schedule.endAt",
    ),
    (
        "window on a one-time task",
        make(
            type="one-time",
            schedule={"at": "2040-01-01T09:00:00Z", "startAt": "2039-01-01T00:00:00Z"},
        ),
        "schedule.startAt",
    ),
    (
        "schedule controls on a trigger task",
        make(
            type="trigger",
            schedule={"overlapPolicy": "allow"},
            trigger={"type": "event", "config": {"event": "x"}},
        ),
        "schedule",
    ),
    ("cron L", make(schedule={"cron": "0 9 L * *"}), "schedule.cron"),
    (
        "bad timezone",
        make(schedule={"cron": "0 9 * * *", "timezone": "Mars/Base"}),
        "schedule.timezone",
    ),
    (
        "offset timezone",
        make(schedule={"cron": "0 9 * * *", "timezone": "+02:00"}),
        "schedule.timezone",
    ),
    ("cron on one-time", make(type="one-time", schedule={"cron": "0 9 * * *"}), "schedule.cron"),
    ("one-time without at", make(type="one-time", schedule={"timezone": "UTC"}), "schedule.at"),
    (
        "at in the past",
        make(type="one-time", schedule={"at": "2001-01-01T00:00:00Z"}),
        "schedule.at",
    ),
    ("at not a time", make(type="one-time", schedule={"at": "tomorrow"}), "schedule.at"),
    ("at a number", make(type="one-time", schedule={"at": 1700000000}), "schedule.at"),
    ("trigger task without trigger", make(type="trigger", schedule=...), "trigger"),
    (
        "unknown trigger type",
        make(type="trigger", schedule=..., trigger={"type": "sms"}),
        "trigger.type",
    ),
    ("trigger on recurring", make(trigger={"type": "webhook"}), "trigger"),
    ("no action", make(action=...), "action"),
    ("action not object", make(action="ping"), "action"),
    ("unknown action type", make(action={"type": "teleport"}), "action.type"),
    (
        "run-code without language",
        make(action={"type": "run-code", "code": "1"}),
        "action.language",
    ),
    ("webhook without url", make(action={"type": "webhook"}), "action.url"),
    ("webhook ftp url", make(action=action(url="ftp://example.com/x")), "action.url"),
    ("webhook relative url", make(action=action(url="/hook")), "action.url"),
    ("webhook bad port", make(action=action(url="http://example.com:99999/")), "action.url"),
    ("webhook bad method", make(action=action(method="BREW")), "action.method"),
    ("webhook header not text", make(action=action(headers={"X-N": 5})), "action.headers.X-N"),
    ("webhook timeout zero", make(action=action(timeout=0)), "action.timeout"),
    ("webhook unknown field", make(action=action(verb="POST")), "action.verb"),
    ("negative retries", make(retryPolicy={"maxRetries": -1}), "retryPolicy.maxRetries"),
    ("too many retries", make(retryPolicy={"maxRetries": 1000}), "retryPolicy.maxRetries"),
    ("backoff not a number", make(retryPolicy={"backoffMs": "soon"}), "retryPolicy.backoffMs"),
    ("unknown retry field", make(retryPolicy={"tries": 2}), "retryPolicy.tries"),
    ("unknown channel", make(notification={"channels": ["pigeon"]}), "notification.channels[0]"),
    ("notify flag not bool", make(notification={"onSuccess": "maybe"}), "notification.onSuccess"),
    ("conditions not a list", make(conditions={"type": "time"}), "conditions"),
    ("condition without operator", make(conditions=[{"type": "time"}]), "conditions[0].operator"),
    ("NUL in a string", make(name="a\u0000b"), "name"),
    ("lone surrogate", make(description="\ud800"), "description"),
    ("deep nesting", make(conditions=nested(80)), "conditions"),
    ("staff-only userId", make(userId="someone-else"), "userId"),
]


@pytest.fixture
def api(django_user_model: Any) -> APIClient:
    return client_for(django_user_model, "validator")


def raw_json(body: Any) -> str:
    # json.dumps writes lone surrogates and NUL as escapes, as a client would send them.
    return json.dumps(body)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "path"), [(b, p) for _, b, p in CASES], ids=[name for name, _, _ in CASES]
)
def test_wrong_input_names_the_field(api: APIClient, body: Any, path: str) -> None:
    response = api.post("/api/tasks", raw_json(body), content_type="application/json")
    assert response.status_code in (400, 403), response.content[:400]
    keys = set(response.json())
    assert any(
        key == path or key.startswith(f"{path}.") or key.startswith(f"{path}[") for key in keys
    ), keys
    assert not ScheduledTask.objects.exists() and not PeriodicTask.objects.exists()


@pytest.mark.django_db
def test_nan_and_infinity_are_refused(api: APIClient) -> None:
    for literal in ("NaN", "Infinity", "-Infinity"):
        raw = raw_json(make(retryPolicy={"backoffMs": 1})).replace(
            '"backoffMs": 1', f'"backoffMs": {literal}'
        )
        response = api.post("/api/tasks", raw, content_type="application/json")
        assert response.status_code == 400, literal
    assert not ScheduledTask.objects.exists()


def test_the_table_has_at_least_forty_cases() -> None:
    assert len(CASES) >= 40


def test_validation_table_on_sqlite(tmp_path: Path) -> None:
    """The same table on the embedded database (the suite itself may run on PostgreSQL)."""
    if os.environ.get("SCHEDULER_TEST_DATABASE") == "sqlite":
        pytest.skip("already running on SQLite")
    env = {
        **os.environ,
        "SCHEDULER_TEST_DATABASE": "sqlite",
        "SCHEDULER_DATA_DIR": str(tmp_path / "var"),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            __file__,
            "-k",
            "not on_sqlite",
        ],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout


@pytest.mark.django_db
def test_requested_database_is_the_one_in_use() -> None:
    from django.db import connection

    if os.environ.get("SCHEDULER_TEST_DATABASE") == "sqlite":
        assert connection.vendor == "sqlite"
