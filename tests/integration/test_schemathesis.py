"""schemathesis against the live API's own OpenAPI document: no input gets a 500."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import make_stack
from tests.integration.stack import ROOT, Stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

TOKEN = """
from django.contrib.auth.models import User
from tasks_app.auth import token_issue
user, _ = User.objects.get_or_create(username="fuzzer")
result = token_issue(user)
"""


@pytest.fixture(scope="module", params=["embedded", "postgres-redis"])
def web(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, str]]:
    stack = make_stack(request.param, tmp_path_factory.mktemp(f"fuzz-{request.param}"))
    stack.env.update(
        {
            "SCHEDULER_THROTTLE_WRITES": "100000/min",
            "SCHEDULER_THROTTLE_RUNS": "100000/min",
            "SCHEDULER_THROTTLE_PREVIEWS": "100000/min",
            "SCHEDULER_THROTTLE_WEBHOOKS": "100000/min",
            "SCHEDULER_THROTTLE_EVENTS": "100000/min",
        }
    )
    try:
        stack.manage("migrate", "--noinput")
        token = stack.orm(TOKEN)
        stack.start("web", stack.compose_argv("web"))
        stack.wait_http(f"http://127.0.0.1:{stack.web_port}/api/health", timeout=40)
        yield stack, token
    finally:
        stack.stop()


def test_no_input_gets_a_server_error(web: tuple[Stack, str]) -> None:
    stack, token = web
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"http://127.0.0.1:{stack.web_port}/api/schema/?format=json",
            "-H",
            f"Authorization: Token {token}",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "25",
            "--request-timeout",
            "10",
            "--seed",
            "20261127",
        ],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, report + "\n" + stack.log_tail(80)
    assert "Server error" not in done.stdout, report
