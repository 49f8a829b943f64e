"""compose.yaml is valid and its processes, started by hand with the same commands,
make a working system on a local PostgreSQL and Redis (no Docker engine here), including
the email trigger's SMTP receiver (``mail``)."""

from __future__ import annotations

import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tasks_app.conf import RUN_TASK_NAME
from tests.http_receiver import Receiver
from tests.integration.conftest import create_tasks, make_stack
from tests.integration.stack import ROOT, Stack, compose_services, free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

APP_SERVICES = ("migrate", "web", "worker", "beat", "flower", "mail")


def test_compose_file_declares_the_whole_system() -> None:
    services = compose_services()
    assert set(services) == {"postgres", "redis", *APP_SERVICES}
    for name in ("postgres", "redis", "web", "flower", "worker", "mail"):
        assert services[name]["healthcheck"]["test"], name
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://"), name
        assert env["CELERY_BROKER_URL"].startswith("redis://"), name
        assert isinstance(services[name]["command"], list), name
    assert services["worker"]["command"][:4] == ["celery", "-A", "scheduler_project", "worker"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "scheduler_project", "beat"]
    assert services["web"]["command"][:2] == ["gunicorn", "scheduler_project.wsgi"]
    assert services["mail"]["command"] == ["python", "manage.py", "receive_email"]
    assert services["mail"]["environment"]["SCHEDULER_SMTP_BIND"] == "0.0.0.0"
    assert "ports" not in services["worker"] and "container_name" not in services["worker"], (
        "the worker must stay scalable"
    )
    assert (ROOT / "Dockerfile").exists()


@pytest.fixture(scope="module")
def compose_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = make_stack("postgres-redis", tmp_path_factory.mktemp("compose"))
    stack.env["FLOWER_BASIC_AUTH"] = "ops:secret-pass"
    stack.env["SCHEDULER_SMTP_PORT"] = str(free_port())  # compose's 2525, on a free port
    try:
        stack.manage(*compose_services()["migrate"]["command"][2:])
        for name in ("web", "worker", "beat", "flower", "mail"):
            stack.start(name, stack.compose_argv(name))
        yield stack
    finally:
        stack.stop()


def test_compose_processes_serve_health_admin_and_flower(compose_stack: Stack) -> None:
    base = f"http://127.0.0.1:{compose_stack.web_port}"
    assert compose_stack.wait_http(f"{base}/api/health", timeout=40) == 200
    health = requests.get(f"{base}/api/health", timeout=5).json()
    assert health["database"] == {"ok": True, "vendor": "postgresql"}
    assert health["broker"]["ok"] is True
    login = requests.get(f"{base}/admin/login/", timeout=5)
    assert login.status_code == 200 and "csrfmiddlewaretoken" in login.text
    css = requests.get(f"{base}/static/admin/css/base.css", timeout=5)
    assert css.status_code == 200, "gunicorn must serve the admin's static files"
    flower = f"http://127.0.0.1:{compose_stack.flower_port}"
    assert compose_stack.wait_http(f"{flower}/healthcheck", timeout=40) == 200
    assert requests.get(f"{flower}/", timeout=5).status_code == 401
    assert requests.get(f"{flower}/", auth=("ops", "secret-pass"), timeout=5).status_code == 200


def test_worker_answers_ping(compose_stack: Stack) -> None:
    def ping() -> str:
        done = subprocess.run(
            [
                str(Path(sys.executable).parent / "celery"),
                "-A",
                "scheduler_project",
                "inspect",
                "ping",
                "--timeout",
                "5",
            ],
            cwd=ROOT,
            env=compose_stack.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.stdout if "pong" in done.stdout else ""

    assert "pong" in wait_until(ping, 60, interval=1, message=compose_stack.log_tail())


def _smtp_ready(port: int) -> bool:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=3) as client:
            return client.noop()[0] == 250
    except OSError:
        return False


def test_mail_to_a_tasks_address_runs_it_with_the_subject(
    compose_stack: Stack, http: Receiver
) -> None:
    """The issue's acceptance: smtplib on loopback to the task's address starts it, and
    the execution (and its action, through {email.subject}) has the subject; mail to an
    unknown address is refused."""
    port = int(compose_stack.env["SCHEDULER_SMTP_PORT"])
    wait_until(lambda: _smtp_ready(port), 30, message=compose_stack.log_tail())
    [task_id] = create_tasks(
        compose_stack,
        {
            "name": "mail in",
            "type": "trigger",
            "trigger": {"type": "email", "config": {}},
            "action": {
                "type": "webhook",
                "url": f"{http.url}/mail-in",
                "body": {"s": "{email.subject}"},
            },
        },
    )
    local = compose_stack.orm(
        "from tasks_app.models import TaskMailbox\n"
        f"result = TaskMailbox.objects.get(task_id={task_id!r}).local_part"
    )
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("a@example.org", ["t-unknown@localhost"], b"Subject: x\r\n\r\nx")
        client.sendmail(
            "a@example.org",
            [f"{local}@localhost"],
            b"From: a@example.org\r\nSubject: Order 42 shipped\r\n\r\nbody\r\n",
        )
    [request] = http.wait_for("/mail-in", timeout=60)
    assert request.json() == {"s": "Order 42 shipped"}
    rows = compose_stack.query(
        "SELECT trigger, payload->>'subject', status FROM task_executions WHERE task_id = ?",
        (compose_stack.id_param(task_id),),
    )
    assert [row[:2] for row in rows] == [("email", "Order 42 shipped")]


def test_flower_lists_runs_though_workers_start_without_task_events(compose_stack: Stack) -> None:
    """Workers send task events only while a monitor asks for them
    (CELERY_WORKER_SEND_TASK_EVENTS is off by default): Flower asks every 5 s, so the runs
    show up in Flower all the same."""
    [task_id] = create_tasks(
        compose_stack,
        {
            "name": "seen by flower",
            "type": "trigger",
            "trigger": {"type": "event", "config": {"event": "flower-check"}},
            "action": {"type": "file-operation", "operation": "list"},
        },
    )
    flower = f"http://127.0.0.1:{compose_stack.flower_port}"
    assert compose_stack.wait_http(f"{flower}/healthcheck", timeout=40) == 200
    run_now = (
        "from tasks_app.models import ScheduledTask\n"
        "from tasks_app.services.dispatch import task_run_now\n"
        f"result = str(task_run_now(task=ScheduledTask.objects.get(pk={task_id!r})).pk)"
    )

    def listed() -> bool:
        execution_id = compose_stack.orm(run_now)
        time.sleep(3)
        tasks = requests.get(f"{flower}/api/tasks", auth=("ops", "secret-pass"), timeout=10).json()
        return any(
            info.get("name") == RUN_TASK_NAME
            and execution_id in str(info.get("kwargs"))
            and info.get("state") == "SUCCESS"
            for info in tasks.values()
        )

    wait_until(listed, 90, interval=0.5, message=compose_stack.log_tail())
