"""Writing a report out: format-neutral blocks become Markdown, or one self-contained HTML
page (inline CSS, an inline SVG chart, no scripts, no external resources).

Every string that reaches a page is escaped here: ``html.escape`` in HTML (text and SVG),
backslash escapes in Markdown, so task names, errors and Claude's answer stay text.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&])")
BOLD = re.compile(r"\*\*(.+?)\*\*")
LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+(.*)$")
COLORS = {"completed": "#2e7d32", "failed": "#c62828", "other": "#9e9e9e"}
CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2933;
background:#f5f7fa;margin:0}main{max-width:960px;margin:0 auto;padding:24px}
h1{margin:0 0 4px}h2{margin-top:32px;border-bottom:1px solid #d9e2ec;padding-bottom:4px}
.meta{color:#627d98;margin:0 0 16px}.figures{display:flex;flex-wrap:wrap;gap:12px}
.figure{background:#fff;border:1px solid #d9e2ec;border-radius:8px;padding:10px 14px;
min-width:140px}.figure .label{display:block;color:#627d98;font-size:12px;
text-transform:uppercase}.figure .value{font-size:20px;font-weight:600}
table{border-collapse:collapse;width:100%;background:#fff;margin:8px 0}
th,td{border:1px solid #d9e2ec;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#f0f4f8}td{overflow-wrap:anywhere}.empty{color:#627d98;font-style:italic}
svg{background:#fff;border:1px solid #d9e2ec;border-radius:8px;max-width:100%;height:auto}
"""


@dataclass(frozen=True)
class Figures:
    items: list[tuple[str, str]]


@dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: list[list[str]]
    empty: str = "Nothing to show."


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Chart:
    """Executions per day by status: an SVG in HTML, a table of busy days in Markdown."""

    days: list[dict[str, Any]]


@dataclass(frozen=True)
class Answer:
    """Claude's Markdown answer: kept as Markdown, shown as escaped paragraphs and lists."""

    text: str


Block = Figures | Table | Text | Chart | Answer
Section = tuple[str, list[Block]]


# --- figures -------------------------------------------------------------------------


def fmt_int(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def fmt_rate(rate: float | None) -> str:
    return "–" if rate is None else f"{round(rate * 100, 1):g} %"


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "–"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    minutes, seconds = divmod(round(ms / 1000), 60)
    return f"{minutes} min {seconds} s"


def fmt_time(iso: str | None) -> str:
    if not iso:
        return "–"
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


# --- Markdown ------------------------------------------------------------------------


def md_text(value: str) -> str:
    """One line of literal text: Markdown syntax and line breaks neutralised."""
    text = MD_SPECIAL.sub(r"\\\1", " ".join(str(value).split()))
    return "\\" + text if text[:1] in {"#", "-", "+", "="} else text


def _md_table(headers: tuple[str, ...] | list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(md_text(h) for h in headers) + " |"]
    lines.append("|" + " --- |" * len(headers))
    lines += ["| " + " | ".join(md_text(cell) or " " for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _md_block(block: Block) -> str:
    if isinstance(block, Figures):
        return "\n".join(
            f"- **{md_text(label)}:** {md_text(value)}" for label, value in block.items
        )
    if isinstance(block, Table):
        return _md_table(block.headers, block.rows) if block.rows else f"_{md_text(block.empty)}_"
    if isinstance(block, Text):
        return md_text(block.text)
    if isinstance(block, Chart):
        busy = [d for d in block.days if d["completed"] + d["failed"] + d["other"]]
        if not busy:
            return "_No executions in the period._"
        rows = [[d["date"], str(d["completed"]), str(d["failed"]), str(d["other"])] for d in busy]
        return _md_table(("Day (UTC)", "Completed", "Failed", "Other"), rows)
    return block.text.strip().replace("<", "\\<")  # Answer: Markdown, but no raw HTML


def render_markdown(title: str, subtitle: str, sections: list[Section]) -> str:
    parts = [f"# {md_text(title)}", f"_{md_text(subtitle)}_"]
    for heading, blocks in sections:
        parts.append(f"## {md_text(heading)}")
        parts += [_md_block(block) for block in blocks]
    return "\n\n".join(parts) + "\n"


# --- HTML ----------------------------------------------------------------------------


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _html_table(block: Table) -> str:
    if not block.rows:
        return f'<p class="empty">{esc(block.empty)}</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in block.headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in block.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_answer(text: str) -> str:
    """Paragraphs, lists and **bold** of a Markdown answer, every character escaped first."""
    out: list[str] = []
    items: list[str] = []
    for line in [*text.splitlines(), ""]:
        item = LIST_ITEM.match(line)
        if item:
            items.append(item.group(1))
            continue
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items = []
        if line.strip():
            stripped = line.strip()
            if stripped.startswith("#"):
                out.append(f"<h3>{_inline(stripped.lstrip('#').strip())}</h3>")
            else:
                out.append(f"<p>{_inline(stripped)}</p>")
    return "".join(out)


def _inline(text: str) -> str:
    return BOLD.sub(r"<strong>\1</strong>", esc(text))


def _html_block(block: Block) -> str:
    if isinstance(block, Figures):
        cards = "".join(
            f'<div class="figure"><span class="label">{esc(label)}</span>'
            f'<span class="value">{esc(value)}</span></div>'
            for label, value in block.items
        )
        return f'<div class="figures">{cards}</div>'
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Text):
        return f"<p>{esc(block.text)}</p>"
    if isinstance(block, Chart):
        return bar_chart_svg(block.days)
    return _html_answer(block.text)


def render_html(title: str, subtitle: str, sections: list[Section]) -> str:
    body = "".join(
        f"<section><h2>{esc(heading)}</h2>{''.join(_html_block(b) for b in blocks)}</section>"
        for heading, blocks in sections
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>"
        f'<body><main><h1>{esc(title)}</h1><p class="meta">{esc(subtitle)}</p>{body}'
        "</main></body></html>\n"
    )


def bar_chart_svg(days: list[dict[str, Any]], width: int = 760, height: int = 260) -> str:
    """Stacked bars per day (completed, failed, other), each with a <title> tooltip."""
    left, right, top, bottom = 44, 12, 28, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([d["completed"] + d["failed"] + d["other"] for d in days] + [1])
    slot = plot_w / max(len(days), 1)
    step = max(1, round(len(days) / 8))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" '
        f'aria-label="{esc("Executions per day by status")}" font-size="11" '
        'font-family="system-ui,sans-serif">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" '
        'stroke="#9fb3c8"/>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{esc(fmt_int(peak))}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end">0</text>',
    ]
    for index, day in enumerate(days):
        x = left + index * slot + slot * 0.1
        y = top + plot_h
        total = day["completed"] + day["failed"] + day["other"]
        tip = (
            f"{day['date']}: {day['completed']} completed, {day['failed']} failed, "
            f"{day['other']} other"
        )
        parts.append(f"<g><title>{esc(tip)}</title>")
        for status in ("completed", "failed", "other"):
            h = plot_h * day[status] / peak
            if h > 0:
                y -= h
                parts.append(
                    f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.8:.1f}" height="{h:.1f}" '
                    f'fill="{COLORS[status]}"/>'
                )
        if not total:
            parts.append(
                f'<rect x="{x:.1f}" y="{top:.1f}" width="{slot * 0.8:.1f}" '
                f'height="{plot_h:.1f}" fill="transparent"/>'
            )
        parts.append("</g>")
        if index % step == 0:
            parts.append(
                f'<text x="{x + slot * 0.4:.1f}" y="{height - bottom + 16}" '
                f'text-anchor="middle">{esc(day["date"][5:])}</text>'
            )
    for offset, (status, color) in enumerate(COLORS.items()):
        lx = left + offset * 110
        parts.append(
            f'<rect x="{lx}" y="8" width="10" height="10" fill="{color}"/>'
            f'<text x="{lx + 14}" y="17">{esc(status)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
