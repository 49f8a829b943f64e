"""The operators' pages in a real browser: Debian's Chromium (/usr/bin/chromium), headless,
driven by Playwright, against a real web server and worker (the embedded default).

An operator logs into the admin, creates a recurring task through the form (a wrong cron
is refused on the form first), finds it in the calendar on the right days, pauses it with
the bulk action, runs it now, and opens its history. Screenshots of the calendar and the
task page are kept as test artifacts (``SCHEDULER_TEST_ARTIFACTS``, default
``test-artifacts/browser``)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.http_receiver import Receiver
from tests.integration.conftest import make_stack
from tests.integration.stack import ROOT, Stack, procfile_commands
from tests.services import unavailable

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CHROMIUM = os.environ.get("SCHEDULER_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("SCHEDULER_TEST_ARTIFACTS", ROOT / "test-artifacts" / "browser"))
PASSWORD = "browser-pass-1234"
NAME = "Weekday report (browser)"

ADMIN = """
from django.contrib.auth import get_user_model
users = get_user_model()
if not users.objects.filter(username="operator").exists():
    users.objects.create_superuser("operator", "", PASSWORD)
result = True
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable(
            "playwright is not installed",
            remedy="pip install -e '.[test]'",
            label="BROWSER MISSING",
        )
    if not shutil.which(CHROMIUM):
        unavailable(
            f"{CHROMIUM} is missing", remedy="apt-get install chromium", label="BROWSER MISSING"
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, http: Receiver) -> Iterator[tuple[Stack, str]]:
    stack = make_stack("embedded", tmp_path_factory.mktemp("browser"))
    try:
        stack.manage("migrate", "--noinput")
        stack.orm(f"PASSWORD = {PASSWORD!r}\n{ADMIN}")
        commands = procfile_commands()
        stack.start("web", commands["web"])
        stack.start("worker", commands["worker"])
        base = f"http://127.0.0.1:{stack.web_port}"
        stack.wait_http(f"{base}/api/health", timeout=60)
        yield stack, base
    finally:
        stack.stop()


def next_month_first() -> date:
    today = date.today()
    return (today.replace(day=1) + timedelta(days=32)).replace(day=1)


def test_an_operator_goes_through_the_admin_and_the_calendar(
    browser: Any, site: tuple[Stack, str], http: Receiver
) -> None:
    from playwright.sync_api import expect

    stack, base = site
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(20_000)

    # Log in.
    page.goto(f"{base}/admin/login/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page.locator("#user-tools")).to_contain_text("operator")
    expect(page.locator("#user-tools a", has_text="Calendar")).to_be_visible()

    # A recurring task through the form; a wrong cron first.
    page.goto(f"{base}/admin/tasks_app/scheduledtask/add/")
    page.fill("#id_name", NAME)
    page.select_option("#id_type", "recurring")
    page.fill("#id_cron", "0 25 * * 1-5")
    page.fill("#id_timezone", "America/New_York")
    action = {"type": "webhook", "url": f"{http.url}/browser-run"}
    page.fill("#id_action", json.dumps(action))
    page.click("input[name=_save]")
    expect(page.locator(".errornote")).to_be_visible()
    cron_errors = page.locator(".field-cron .errorlist")
    expect(cron_errors.first).to_contain_text("schedule.cron")
    assert stack.query("SELECT count(*) FROM scheduled_tasks")[0][0] == 0
    page.fill("#id_cron", "0 9 * * 1-5")
    page.fill("#id_action", json.dumps(action))
    page.click("input[name=_save]")
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")
    row = page.locator("#result_list tr", has_text=NAME)
    expect(row).to_contain_text("Monday through Friday")

    # The calendar: on weekdays of next month, never at weekends.
    first = next_month_first()
    page.goto(f"{base}/calendar/?view=month&date={first:%Y-%m-%d}&tz=America/New_York")
    cells = page.locator("td[data-date]", has=page.locator(".entry", has_text=NAME))
    days = [date.fromisoformat(d) for d in cells.evaluate_all("c => c.map(e => e.dataset.date)")]
    in_month = [d for d in days if d.month == first.month]
    assert in_month, page.content()[:2000]
    assert all(d.weekday() < 5 for d in days)
    expected = [
        first + timedelta(days=i)
        for i in range(31)
        if (first + timedelta(days=i)).month == first.month
        and (first + timedelta(days=i)).weekday() < 5
    ]
    assert in_month == expected
    page.screenshot(path=str(ARTIFACTS / "calendar.png"), full_page=True)

    # Pause it with the bulk action, then run it now.
    page.goto(f"{base}/admin/tasks_app/scheduledtask/")
    row = page.locator("#result_list tr", has_text=NAME)
    row.locator("input.action-select").check()
    page.select_option("select[name=action]", "pause")
    page.click("button[name=index]")
    expect(page.locator(".messagelist")).to_contain_text("Paused 1 task")
    expect(page.locator("#result_list tr", has_text=NAME)).to_contain_text("Paused")
    row = page.locator("#result_list tr", has_text=NAME)
    row.locator("input.action-select").check()
    page.select_option("select[name=action]", "run_now")
    page.click("button[name=index]")
    expect(page.locator(".messagelist")).to_contain_text("Queued 1 run")
    http.wait_for("/browser-run", 1, timeout=60)

    # The task page and its history.
    page.locator("#result_list a", has_text=NAME).first.click()
    expect(page.locator("body")).to_contain_text("next runs", ignore_case=True)
    page.screenshot(path=str(ARTIFACTS / "task.png"), full_page=True)
    # The task's own History link (not Django's change-log "History" button).
    page.locator("a[href*='taskexecution/?task__id__exact']", has_text="History").first.click()
    history = page.locator("#result_list")
    for _ in range(20):
        if "completed" in history.inner_text().lower():
            break
        page.wait_for_timeout(1000)
        page.reload()
    expect(history).to_contain_text("Run now")
    expect(history).to_contain_text("completed", ignore_case=True)
    page.screenshot(path=str(ARTIFACTS / "history.png"), full_page=True)
    for name in ("calendar.png", "task.png", "history.png"):
        assert (ARTIFACTS / name).stat().st_size > 10_000
