"""The README's run command (`python manage.py up`) on the embedded default: it prints
the URLs and a login, serves the API, admin, Flower and the inbound SMTP receiver within
30 s, and Ctrl-C stops every process it started."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.integration.stack import FAST_RECOVERY, ROOT, free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_up_starts_everything_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    web, flower, smtp = free_port(), free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "CELERY_", "SCHEDULER_", "DJANGO_"))
    }
    env.update(
        FAST_RECOVERY,
        SCHEDULER_DATA_DIR=str(tmp_path / "var"),
        WEB_PORT=str(web),
        FLOWER_PORT=str(flower),
        SCHEDULER_SMTP_PORT=str(smtp),
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "up.log"
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "up"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def health() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{web}/api/health", timeout=2).ok
            except requests.RequestException:
                return False

        wait_until(health, 30, message=f"no healthy API within 30 s:\n{log.read_text()}")
        assert time.monotonic() - started < 30
        output = log.read_text()
        login = re.search(r"login: (\S+) / (\S+)", output)
        assert login and f"http://127.0.0.1:{web}/admin/" in output, output
        assert f"http://127.0.0.1:{flower}/" in output
        page = requests.get(f"http://127.0.0.1:{web}/admin/", timeout=5)
        assert page.url.endswith("/admin/login/?next=/admin/") and "Log in" in page.text
        session = requests.Session()
        form = session.get(f"http://127.0.0.1:{web}/admin/login/", timeout=5)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
        done = session.post(
            f"http://127.0.0.1:{web}/admin/login/?next=/admin/",
            timeout=5,
            data={
                "username": login.group(1),
                "password": login.group(2),
                "csrfmiddlewaretoken": token,
            },
            headers={"Referer": f"http://127.0.0.1:{web}/admin/login/"},
        )
        assert "Site administration" in done.text, "the printed admin login does not work"
        wait_until(lambda: _flower_up(flower), 30, message=log.read_text())
        wait_until(lambda: _smtp_up(smtp), 30, message=log.read_text())
        marker = f"SCHEDULER_DATA_DIR={tmp_path / 'var'}".encode()
        # honcho, web, worker (+pool), beat, flower, mail
        assert len(_processes_with(marker)) >= 6
    finally:
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        process.wait(timeout=40)
    marker = f"SCHEDULER_DATA_DIR={tmp_path / 'var'}".encode()
    wait_until(
        lambda: not _processes_with(marker),
        10,
        message=f"processes left running: {_processes_with(marker)}",
    )


def _processes_with(marker: bytes) -> list[int]:
    """PIDs whose environment carries ``marker`` (every process `up` started has it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _flower_up(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthcheck", timeout=2).ok
    except requests.RequestException:
        return False


def _smtp_up(port: int) -> bool:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=2) as client:
            return client.noop()[0] == 250
    except OSError:
        return False
