"""generate-report: a report on the owner's own executions, stored and downloadable.

The figures come from ``ctx.host.report_data`` (the owner's real rows), the report is
rendered as Markdown and as self-contained HTML from the same blocks and stored with
``ctx.host.save_report``. The ``recommendations`` section asks Claude when
ANTHROPIC_API_KEY (or ANTHROPIC_AUTH_TOKEN) is set, and says plainly when it is not.

A Claude failure (any: overload, rate limit, a bad key) does not fail the report: the
figures are its point, and a retry would recompute and store a second report. The error
is logged and written in the section, and the result's ``recommendations`` says
``failed``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from . import report_render as r
from .ai_prompt import ask_claude, claude_configured
from .base import ActionConfig, ActionResult, ExecutionContext, Executor
from .errors import ExecutorError, PermanentError

logger = logging.getLogger(__name__)

SectionName = Literal[
    "summary", "metrics", "failures", "upcoming", "tasks", "usage", "recommendations"
]
DEFAULT_SECTIONS: tuple[SectionName, ...] = ("summary", "metrics", "failures", "upcoming")
MARKDOWN_IN_RESULT = 20_000
RECOMMENDATION_TOKENS = 800
SECTION_TITLES = {
    "summary": "Summary",
    "metrics": "Metrics",
    "failures": "Latest failures",
    "upcoming": "Upcoming runs",
    "tasks": "Tasks",
    "usage": "Claude usage",
    "recommendations": "Recommendations",
}
SYSTEM = (
    "You review the figures of a user's scheduled automation tasks. Answer with 3 to 5 "
    "short, concrete recommendations as a Markdown bullet list, based only on the figures "
    "given. No preamble."
)


@dataclass(frozen=True)
class Recommendations:
    status: str  # "generated" | "not-configured" | "failed"
    text: str  # Claude's answer, or the error


class ReportSettings(ActionConfig):
    title: str = Field(min_length=1, max_length=200)
    sections: list[SectionName] = Field(
        default_factory=lambda: list(DEFAULT_SECTIONS), min_length=1, max_length=20
    )
    periodDays: int = Field(default=30, ge=1, le=366)

    @field_validator("title")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()


class GenerateReportConfig(ActionConfig):
    type: Literal["generate-report"]
    config: ReportSettings


class GenerateReportExecutor(Executor[GenerateReportConfig]):
    action_type: ClassVar[str] = "generate-report"
    Config = GenerateReportConfig

    def execute(self, config: GenerateReportConfig, ctx: ExecutionContext) -> ActionResult:
        if ctx.host is None:
            raise PermanentError("generate-report needs the application host to read figures")
        settings = config.config
        sections = list(dict.fromkeys(settings.sections))  # order kept, repeats dropped
        ctx.log(f"collecting figures of the last {settings.periodDays} days")
        data = ctx.host.report_data(period_days=settings.periodDays)
        advice, usage = None, None
        if "recommendations" in sections:
            advice, usage = _recommend(data, ctx)
        blocks = section_blocks(sections, data, advice)
        subtitle = (
            f"Last {settings.periodDays} days: {r.fmt_time(data['from'])} to "
            f"{r.fmt_time(data['to'])}"
        )
        markdown = r.render_markdown(settings.title, subtitle, blocks)
        stored = ctx.host.save_report(
            title=settings.title,
            html=r.render_html(settings.title, subtitle, blocks),
            markdown=markdown,
        )
        ctx.log(f"report {stored['reportId']} stored ({len(markdown)} characters of Markdown)")
        output: dict[str, Any] = {
            "title": settings.title,
            "reportId": stored["reportId"],
            "url": stored["url"],
            "downloadUrl": stored["downloadUrl"],
            "markdown": _capped(markdown, stored["downloadUrl"]),
            "summary": summary(data),
            "sections": sections,
        }
        if advice is not None:
            output["recommendations"] = advice.status
        if usage is not None:
            output["usage"] = usage
        return ActionResult(output=output)


def summary(data: dict[str, Any]) -> dict[str, Any]:
    """The key figures, for the next step of a chain."""
    return {
        "periodDays": data["periodDays"],
        "executions": data["total"],
        "completed": data["counts"]["completed"],
        "failed": data["counts"]["failed"],
        "successRate": data["successRate"],
        "avgDurationMs": data["durations"]["avgMs"],
        "p95DurationMs": data["durations"]["p95Ms"],
        "inputTokens": data["usage"]["inputTokens"],
        "outputTokens": data["usage"]["outputTokens"],
    }


def _capped(markdown: str, download_url: str) -> str:
    if len(markdown) <= MARKDOWN_IN_RESULT:
        return markdown
    note = (
        f"\n\n… (shortened; the full report: {download_url.replace('format=html', 'format=md')})\n"
    )
    return markdown[: MARKDOWN_IN_RESULT - len(note)] + note


def claude_prompt(data: dict[str, Any]) -> str:
    """A compact JSON digest of the figures (the busiest tasks, the latest failures)."""
    digest = {
        **summary(data),
        "executionsByStatus": data["counts"],
        "durationsMs": data["durations"],
        "tasks": [
            {k: t[k] for k in ("name", "actionType", "status", "runs", "failed", "avgMs")}
            for t in data["tasks"][:15]
        ],
        "latestFailures": [
            {"task": f["taskName"], "at": f["at"], "error": f["error"][:200]}
            for f in data["failures"][:5]
        ],
        "upcomingRuns": len(data["upcoming"]),
    }
    return (
        f"Figures of my scheduled tasks over the last {data['periodDays']} days (JSON):\n"
        f"{json.dumps(digest, separators=(',', ':'), ensure_ascii=False)}\n\n"
        "What should I change or look into?"
    )


def _recommend(
    data: dict[str, Any], ctx: ExecutionContext
) -> tuple[Recommendations, dict[str, int] | None]:
    if not claude_configured():
        ctx.log("recommendations skipped: ANTHROPIC_API_KEY is not set")
        return Recommendations("not-configured", ""), None
    try:
        answer = ask_claude(
            claude_prompt(data),
            system=SYSTEM,
            max_tokens=RECOMMENDATION_TOKENS,
            timeout=min(ctx.egress.timeout * 4, max(ctx.time_budget / 2, 5.0)),
            log=ctx.log,
        )
    except ExecutorError as exc:
        logger.warning("execution %s: recommendations failed: %s", ctx.execution_id, exc)
        ctx.log(f"recommendations failed, the report goes on without them: {exc}")
        return Recommendations("failed", str(exc)), None
    return Recommendations("generated", answer.text), answer.usage


# --- what each section shows -----------------------------------------------------------


def section_blocks(
    names: Sequence[str], data: dict[str, Any], advice: Recommendations | None
) -> list[r.Section]:
    makers = {
        "summary": _summary,
        "metrics": _metrics,
        "failures": _failures,
        "upcoming": _upcoming,
        "tasks": _tasks,
        "usage": _usage,
    }
    sections: list[r.Section] = []
    for name in names:
        if name == "recommendations":
            sections.append((SECTION_TITLES[name], _recommendations(advice)))
        else:
            sections.append((SECTION_TITLES[name], makers[name](data)))
    return sections


def _summary(data: dict[str, Any]) -> list[r.Block]:
    counts, durations = data["counts"], data["durations"]
    tasks = data["taskCounts"]
    return [
        r.Figures(
            [
                ("Executions", r.fmt_int(data["total"])),
                ("Success rate", r.fmt_rate(data["successRate"])),
                ("Completed", r.fmt_int(counts["completed"])),
                ("Failed", r.fmt_int(counts["failed"])),
                ("Average duration", r.fmt_ms(durations["avgMs"])),
                ("Active tasks", f"{r.fmt_int(tasks['active'])} of {r.fmt_int(tasks['total'])}"),
            ]
        ),
        r.Text(
            f"{r.fmt_int(data['total'])} executions in the last {data['periodDays']} days: "
            f"{r.fmt_int(counts['completed'])} completed, {r.fmt_int(counts['failed'])} failed "
            f"(success rate {r.fmt_rate(data['successRate'])}, of finished executions)."
        ),
    ]


def _metrics(data: dict[str, Any]) -> list[r.Block]:
    durations = data["durations"]
    by_status = [[status, r.fmt_int(n)] for status, n in data["counts"].items() if n]
    return [
        r.Table(("Status", "Executions"), by_status, "No executions in the period."),
        r.Table(
            ("Finished runs", "Average", "Median (p50)", "p95", "Longest"),
            [
                [
                    r.fmt_int(durations["count"]),
                    r.fmt_ms(durations["avgMs"]),
                    r.fmt_ms(durations["p50Ms"]),
                    r.fmt_ms(durations["p95Ms"]),
                    r.fmt_ms(durations["maxMs"]),
                ]
            ],
        ),
        r.Text("Executions per day (UTC):"),
        r.Chart(data["perDay"]),
    ]


def _failures(data: dict[str, Any]) -> list[r.Block]:
    rows = [[r.fmt_time(f["at"]), f["taskName"], f["error"] or "–"] for f in data["failures"]]
    return [r.Table(("When", "Task", "Error"), rows, "No failed executions in the period.")]


def _upcoming(data: dict[str, Any]) -> list[r.Block]:
    rows = [[r.fmt_time(u["nextRun"]), u["taskName"], u["schedule"]] for u in data["upcoming"]]
    return [r.Table(("Next run", "Task", "Schedule"), rows, "No runs are scheduled.")]


def _tasks(data: dict[str, Any]) -> list[r.Block]:
    rows = [
        [
            t["name"],
            t["actionType"],
            t["status"],
            r.fmt_int(t["runs"]),
            r.fmt_int(t["failed"]),
            r.fmt_rate(t["successRate"]),
            r.fmt_ms(t["avgMs"]),
            r.fmt_time(t["lastRun"]),
        ]
        for t in data["tasks"]
    ]
    headers = ("Task", "Action", "Status", "Runs", "Failed", "Success", "Avg", "Last run")
    return [r.Table(headers, rows, "No tasks yet.")]


def _usage(data: dict[str, Any]) -> list[r.Block]:
    usage = data["usage"]
    rows = [
        [t["name"], r.fmt_int(t["inputTokens"]), r.fmt_int(t["outputTokens"])]
        for t in data["tasks"]
        if t["inputTokens"] or t["outputTokens"]
    ]
    return [
        r.Figures(
            [
                ("Input tokens", r.fmt_int(usage["inputTokens"])),
                ("Output tokens", r.fmt_int(usage["outputTokens"])),
                ("Executions using Claude", r.fmt_int(usage["executions"])),
            ]
        ),
        r.Table(("Task", "Input tokens", "Output tokens"), rows, "No Claude calls in the period."),
    ]


def _recommendations(advice: Recommendations | None) -> list[r.Block]:
    if advice is None or advice.status == "not-configured":
        return [
            r.Text(
                "Recommendations are not configured: set ANTHROPIC_API_KEY for the workers "
                "to have Claude review these figures."
            )
        ]
    if advice.status == "failed":
        return [r.Text(f"Recommendations could not be generated this time: {advice.text}")]
    return [r.Answer(advice.text)]
