"""The one template renderer: plain JSON paths only, escaped by where the value lands."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from executors.templating import TemplateError, render_text, render_value

SCOPE: dict[str, Any] = {
    "previous_result": {"items": [{"title": "Q3 up", "n": 3}], "text": "a&b c/d"},
    "webhook_payload": {"data": "your webhook payload", "order": {"id": 42}},
    "task": {"id": "t-1", "name": "Morning Briefing"},
    "now": "2026-11-27T09:00:00-05:00",
}


def test_guide_placeholders_render_as_text() -> None:
    assert render_text("Analyze this data: {previous_result.text}", SCOPE) == (
        "Analyze this data: a&b c/d"
    )
    assert (
        render_text("Process this order: {webhook_payload}", SCOPE)
        == 'Process this order: {"data":"your webhook payload","order":{"id":42}}'
    )
    assert render_text("{previous_result.items[0].title} at {now}", SCOPE) == (
        "Q3 up at 2026-11-27T09:00:00-05:00"
    )


def test_unknown_names_and_plain_braces_stay_as_written() -> None:
    text = 'json {"a": 1} and {unknown.name} and {task.name}'
    assert render_text(text, SCOPE) == 'json {"a": 1} and {unknown.name} and Morning Briefing'


def test_missing_paths_render_empty_and_are_reported() -> None:
    missing: list[str] = []
    assert render_text("x{previous_result.items[5].title}y", SCOPE, missing=missing) == "xy"
    assert missing == ["{previous_result.items[5].title}"]


@pytest.mark.parametrize(
    "template",
    [
        "{task.__class__}",
        "{task.name.__class__.__mro__}",
        "{task.name!r}",
        "{task.name:>10}",
        "{task[name]}",
        "{previous_result.items[0].title.upper}",
    ],
)
def test_no_attribute_access_format_spec_or_indexing_by_name(template: str) -> None:
    rendered = render_text(template, SCOPE)
    assert "class" not in rendered.replace(template, "")
    assert "upper" not in rendered.replace(template, "") and "built-in" not in rendered


def test_whole_placeholder_in_a_json_body_keeps_the_value() -> None:
    action = {"type": "webhook", "url": "https://x.example/a", "body": "{webhook_payload.order}"}
    assert render_value(action, SCOPE)["body"] == {"id": 42}
    nested = {"type": "webhook", "body": {"title": "{previous_result.items[0].title}"}}
    assert render_value(nested, SCOPE)["body"] == {"title": "Q3 up"}


def test_values_inside_urls_are_percent_encoded() -> None:
    action = {"type": "web-scrape", "url": "https://x.example/search?q={previous_result.text}"}
    assert render_value(action, SCOPE)["url"] == "https://x.example/search?q=a%26b%20c%2Fd"


def test_header_injection_is_refused() -> None:
    scope = {**SCOPE, "webhook_payload": {"evil": "x\r\nX-Admin: 1"}}
    action = {"type": "webhook", "headers": {"X-Note": "{webhook_payload.evil}"}}
    with pytest.raises(TemplateError, match="line break"):
        render_value(action, scope)


def test_code_and_chain_steps_are_never_rendered() -> None:
    action = {"type": "run-code", "language": "python", "code": "print('{task.name}')"}
    assert render_value(action, SCOPE)["code"] == "print('{task.name}')"
    chain = {"type": "chain", "tasks": [{"type": "ai-prompt", "prompt": "{previous_result}"}]}
    assert render_value(chain, SCOPE) == chain


def test_output_is_capped() -> None:
    scope = {"previous_result": "x" * 600_000}
    with pytest.raises(TemplateError, match="longer than"):
        render_text("{previous_result}{previous_result}", scope)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(template=st.text(max_size=80), payload=json_values)
def test_any_template_renders_to_a_string_or_a_template_error(template: str, payload: Any) -> None:
    scope = {"previous_result": payload, "task": {"name": "n"}}
    try:
        out = render_value({"type": "webhook", "headers": {"h": template}, "url": template}, scope)
    except TemplateError:
        return
    assert isinstance(out["url"], str) and isinstance(out["headers"]["h"], str)
    assert "\n" not in out["headers"]["h"] or "\n" in template
