"""generate-report on real rows: the figures, the escaping, Claude's recommendations (the
real SDK against the loopback stand-in), storage, and the report API's isolation."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from executors.base import ActionResult
from executors.errors import ConfigError, PermanentError
from executors.generate_report import MARKDOWN_IN_RESULT, GenerateReportExecutor, _capped
from tasks_app.models import ExecutionTrigger, Report, ScheduledTask, TaskExecution
from tasks_app.services import reports
from tasks_app.services.definitions import task_create
from tests.anthropic_standin import PATH, error, message, no_credentials, point_sdk_at
from tests.api_clients import forced_client
from tests.executor_ctx import make_ctx
from tests.http_receiver import Receiver, Reply

# The routes the lead adds to tasks_app/api/urls.py (under "api/").
pytestmark = pytest.mark.django_db
ALL_BUT_ADVICE = ["summary", "metrics", "failures", "upcoming", "tasks", "usage"]


@dataclass
class Host:
    """What the lead's host does: the services, for this execution's task owner."""

    execution: TaskExecution

    def report_data(self, *, period_days: int) -> dict[str, Any]:
        return reports.report_data(
            owner=self.execution.task.owner,
            period_days=period_days,
            exclude_execution_id=str(self.execution.pk),
        )

    def save_report(self, *, title: str, html: str, markdown: str) -> dict[str, Any]:
        return reports.report_save(
            execution=self.execution, title=title, html=html, markdown=markdown
        )

    def google_credentials(self) -> dict[str, Any] | None:
        return None


def make_task(owner: Any, name: str = "Nightly Sync", **fields: Any) -> ScheduledTask:
    return task_create(
        owner=owner,
        name=name,
        type="recurring",
        cron=fields.pop("cron", "0 2 * * *"),
        action={"type": "webhook", "url": "https://example.com/hook"},
        **fields,
    )


def make_run(
    task: ScheduledTask,
    status: str,
    *,
    ms: int | None = None,
    ago: timedelta = timedelta(hours=1),
    error: str = "",
    tokens: tuple[int, int] = (0, 0),
) -> TaskExecution:
    run = TaskExecution.objects.create(
        task=task,
        trigger=ExecutionTrigger.MANUAL,
        status=status,
        duration_ms=ms,
        error=error,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
    )
    at = timezone.now() - ago
    TaskExecution.objects.filter(pk=run.pk).update(queued_at=at, completed_at=at)
    return run


@pytest.fixture
def figures(user: Any, django_user_model: Any) -> ScheduledTask:
    """3 completed and 1 failed in the period, one older run, and another user's run."""
    task = make_task(user)
    for ms in (100, 200, 300):
        make_run(task, "completed", ms=ms, tokens=(10, 5))
    make_run(task, "failed", ms=400, error="HTTP 503 from upstream", ago=timedelta(days=2))
    make_run(task, "failed", ms=9_999, ago=timedelta(days=45))  # outside 30 days
    other = make_task(django_user_model.objects.create(username="bob"), name="Bob's")
    make_run(other, "failed", ms=5, error="not alice's")
    return task


def generate(task: ScheduledTask, config: dict[str, Any]) -> tuple[ActionResult, list[str]]:
    execution = TaskExecution.objects.create(task=task, trigger=ExecutionTrigger.MANUAL)
    ctx, logs = make_ctx(
        task_id=str(task.pk),
        execution_id=str(execution.pk),
        idempotency_key=str(execution.pk),
        host=Host(execution),
    )
    executor = GenerateReportExecutor()
    action = {"type": "generate-report", "config": config}
    return executor.execute(executor.validate(action), ctx), logs


def test_figures_come_from_the_owners_rows_in_the_period(figures: ScheduledTask) -> None:
    data = reports.report_data(owner=figures.owner, period_days=30)
    assert data["total"] == 4
    assert data["counts"]["completed"] == 3 and data["counts"]["failed"] == 1
    assert data["successRate"] == 0.75
    assert data["durations"] == {
        "count": 4,
        "avgMs": 250,
        "p50Ms": 200,
        "p95Ms": 400,
        "maxMs": 400,
    }
    assert data["usage"] == {"inputTokens": 30, "outputTokens": 15, "executions": 3}
    assert (
        len(data["perDay"]) == 31
        and data["perDay"][-1]["date"] == timezone.now().date().isoformat()
    )
    assert sum(d["completed"] for d in data["perDay"]) == 3
    assert sum(d["failed"] for d in data["perDay"]) == 1
    [failure] = data["failures"]
    assert (failure["taskName"], failure["error"]) == ("Nightly Sync", "HTTP 503 from upstream")
    [row] = data["tasks"]
    assert (row["runs"], row["completed"], row["failed"], row["successRate"]) == (4, 3, 1, 0.75)
    assert row["actionType"] == "webhook" and row["avgMs"] == 250
    assert [u["taskName"] for u in data["upcoming"]] == ["Nightly Sync"]
    assert data["taskCounts"]["active"] == 1
    making = TaskExecution.objects.create(task=figures, trigger=ExecutionTrigger.MANUAL)
    mine = reports.report_data(
        owner=figures.owner, period_days=30, exclude_execution_id=str(making.pk)
    )
    assert mine["total"] == 4 and mine["tasks"][0]["runs"] == 4  # its own run is no figure
    assert reports.report_data(owner=figures.owner, period_days=30)["total"] == 5


def test_the_number_of_queries_does_not_grow_with_rows(figures: ScheduledTask) -> None:
    with CaptureQueriesContext(connection) as few:
        reports.report_data(owner=figures.owner, period_days=30)
    for index in range(6):
        task = make_task(figures.owner, name=f"Extra {index}")
        make_run(task, "failed", ms=10, error="boom")
        make_run(task, "completed", ms=20)
    with CaptureQueriesContext(connection) as many:
        data = reports.report_data(owner=figures.owner, period_days=30)
    assert data["total"] == 16 and len(data["tasks"]) == 7
    assert len(many.captured_queries) == len(few.captured_queries) <= 8


def test_the_report_shows_the_figures_and_is_stored(figures: ScheduledTask) -> None:
    result, logs = generate(figures, {"title": "Monthly Analytics", "sections": ALL_BUT_ADVICE})
    output = result.output
    report = Report.objects.get(pk=output["reportId"])
    assert (report.owner, report.task, report.title) == (
        figures.owner,
        figures,
        "Monthly Analytics",
    )
    assert report.execution is not None and report.execution.task == figures
    assert output["url"] == f"/api/reports/{report.pk}"
    assert output["downloadUrl"] == f"/api/reports/{report.pk}/download?format=html"
    assert output["markdown"] == report.markdown
    assert output["summary"]["successRate"] == 0.75 and output["summary"]["executions"] == 4
    assert "usage" not in output and "recommendations" not in output
    for text in (report.markdown, report.html):
        assert "75 %" in text and "HTTP 503 from upstream" in text and "250 ms" in text
    assert report.markdown.startswith("# Monthly Analytics\n")
    assert "## Latest failures" in report.markdown and "## Claude usage" in report.markdown
    assert "<svg" in report.html and "<title>" in report.html and "<script" not in report.html
    assert any("stored" in line for line in logs)


def test_user_strings_are_escaped_in_html_and_markdown(user: Any) -> None:
    task = make_task(user, name="<script>alert(1)</script> | a")
    make_run(task, "failed", ms=5, error='<img src=x onerror="alert(2)">')
    result, _ = generate(task, {"title": "<b>Weekly</b>", "sections": ["failures", "tasks"]})
    report = Report.objects.get(pk=result.output["reportId"])
    assert "<script" not in report.html and "<img" not in report.html and "<b>" not in report.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; | a" in report.html
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in report.html
    assert "<title>&lt;b&gt;Weekly&lt;/b&gt;</title>" in report.html
    assert r"\<script\>alert(1)\</script\> \| a" in report.markdown
    tables = [b for b in report.markdown.split("\n\n") if b.startswith("| ")]
    assert len(tables) == 2
    for table in tables:  # every row keeps the header's column count
        assert len({len(re.findall(r"(?<!\\)\|", line)) for line in table.splitlines()}) == 1


def test_recommendations_come_from_claude_with_the_figures(
    figures: ScheduledTask, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = message("- Fix the **Nightly Sync** upstream\n- Keep going", input_tokens=321)
    point_sdk_at(receiver, monkeypatch, Reply(body=answer))
    result, _ = generate(figures, {"title": "Ops", "sections": ["summary", "recommendations"]})
    [request] = receiver.received(PATH)
    sent = request.json()
    prompt = sent["messages"][0]["content"]
    assert '"successRate":0.75' in prompt and '"executions":4' in prompt
    assert "Nightly Sync" in prompt and "HTTP 503 from upstream" in prompt
    assert "recommendations" in sent["system"] and sent["max_tokens"] == 800
    assert result.output["usage"] == {"inputTokens": 321, "outputTokens": 7}
    assert result.output["recommendations"] == "generated"
    report = Report.objects.get(pk=result.output["reportId"])
    assert "<li>Fix the <strong>Nightly Sync</strong> upstream</li>" in report.html
    assert "- Fix the **Nightly Sync** upstream" in report.markdown


def test_without_a_key_the_section_says_it_is_not_configured(
    figures: ScheduledTask, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_sdk_at(receiver, monkeypatch)
    no_credentials(monkeypatch)
    result, logs = generate(figures, {"title": "Ops", "sections": ["recommendations"]})
    assert receiver.received(PATH) == []
    assert result.output["recommendations"] == "not-configured" and "usage" not in result.output
    assert "Recommendations are not configured" in result.output["markdown"]
    assert any("ANTHROPIC_API_KEY is not set" in line for line in logs)


def test_a_claude_error_does_not_fail_the_report(
    figures: ScheduledTask, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_sdk_at(receiver, monkeypatch, Reply(status=500, body=error("api_error", "kaput")))
    result, logs = generate(figures, {"title": "Ops", "sections": ["summary", "recommendations"]})
    assert len(receiver.received(PATH)) == 1
    assert result.output["recommendations"] == "failed" and "usage" not in result.output
    assert (
        "could not be generated this time: the Messages API answered HTTP 500: kaput"
        in (result.output["markdown"])
    )
    assert "75 %" in result.output["markdown"]
    assert any("recommendations failed" in line for line in logs)


def test_the_report_api_lists_shows_and_downloads_only_your_reports(
    figures: ScheduledTask, django_user_model: Any
) -> None:
    result, _ = generate(figures, {"title": "Monthly Analytics: Q1/Q2", "sections": ["summary"]})
    report_id = result.output["reportId"]
    api = forced_client(figures.owner)

    listed = api.get("/api/reports").json()
    assert listed["count"] == 1 and listed["results"][0]["id"] == report_id
    assert api.get(f"/api/reports?taskId={figures.pk}").json()["count"] == 1
    other_task = make_task(figures.owner, name="Other")
    assert api.get(f"/api/reports?taskId={other_task.pk}").json()["count"] == 0
    assert api.get("/api/reports?taskId=nope").json() == {"taskId": ["must be a task id (a UUID)"]}

    detail = api.get(f"/api/reports/{report_id}").json()
    assert detail["taskId"] == str(figures.pk) and detail["title"] == "Monthly Analytics: Q1/Q2"
    assert detail["executionId"] == str(Report.objects.get(pk=report_id).execution_id)
    assert datetime.fromisoformat(detail["createdAt"]).utcoffset() == timedelta(0)
    assert detail["markdown"].startswith("# Monthly Analytics: Q1/Q2")

    page = api.get(result.output["downloadUrl"])
    day = timezone.now().date().isoformat()
    assert page.status_code == 200 and page["Content-Type"] == "text/html; charset=utf-8"
    assert page["Content-Disposition"] == (
        f'attachment; filename="monthly-analytics-q1q2-{day}.html"'
    )
    assert "script-src 'none'" in page["Content-Security-Policy"]
    assert page.content.decode().startswith("<!DOCTYPE html>")
    text = api.get(f"/api/reports/{report_id}/download?format=md", HTTP_ACCEPT="text/markdown")
    assert text["Content-Type"] == "text/markdown; charset=utf-8"
    assert text["Content-Disposition"].endswith(f'-{day}.md"')
    assert text.content.decode() == detail["markdown"]
    bad = api.get(f"/api/reports/{report_id}/download?format=pdf")
    assert bad.status_code == 400 and bad.json() == {"format": ["must be one of html, md"]}

    mallory = forced_client(django_user_model.objects.create(username="mallory", is_staff=True))
    assert mallory.get("/api/reports").json()["count"] == 0
    assert mallory.get(f"/api/reports/{report_id}").status_code == 404
    assert mallory.get(f"/api/reports/{report_id}/download?format=md").status_code == 404
    assert APIClient().get(f"/api/reports/{report_id}").status_code in (401, 403)


def test_the_openapi_document_describes_the_report_endpoints() -> None:
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    download = schema["paths"]["/api/reports/{id}/download"]["get"]
    assert set(download["responses"]["200"]["content"]) == {"text/html", "text/markdown"}
    assert [p["name"] for p in download["parameters"] if p["in"] == "query"] == ["format"]
    assert "taskId" in [p["name"] for p in schema["paths"]["/api/reports"]["get"]["parameters"]]


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"sections": ["summary"]}, "config.title"),
        ({"title": "   "}, "config.title"),
        ({"title": "x" * 201}, "config.title"),
        ({"title": "x", "sections": ["summary", "charts"]}, "config.sections[1]"),
        ({"title": "x", "sections": []}, "config.sections"),
        ({"title": "x", "periodDays": 0}, "config.periodDays"),
        ({"title": "x", "periodDays": 367}, "config.periodDays"),
        ({"title": "x", "colour": "red"}, "config.colour"),
        (None, "config"),
    ],
)
def test_config_errors_name_the_field(config: Any, path: str) -> None:
    action: dict[str, Any] = {"type": "generate-report"}
    if config is not None:
        action["config"] = config
    with pytest.raises(ConfigError) as caught:
        GenerateReportExecutor().validate(action)
    assert path in [p for p, _ in caught.value.errors]


def test_the_guides_config_is_valid_and_a_missing_host_is_permanent() -> None:
    executor = GenerateReportExecutor()
    config = executor.validate(
        {
            "type": "generate-report",
            "config": {
                "title": "Monthly Analytics",
                "sections": ["summary", "metrics", "recommendations"],
            },
        }
    )
    assert config.config.periodDays == 30
    ctx, _ = make_ctx()
    with pytest.raises(PermanentError, match="host"):
        executor.execute(config, ctx)


def test_markdown_in_the_result_is_capped() -> None:
    long = "x" * (MARKDOWN_IN_RESULT * 2)
    capped = _capped(long, "/api/reports/1/download?format=html")
    assert len(capped) == MARKDOWN_IN_RESULT and capped.endswith("/download?format=md)\n")
