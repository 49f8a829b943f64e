"""The one template renderer: ``{previous_result}``, ``{webhook_payload.order.id}``,
``{previous_result.items[0].title}``, ``{task.name}``, ``{now}``.

Safe by construction: a placeholder is a name from the scope followed by plain JSON
path steps (``.key`` and ``[index]``) over dicts and lists, nothing else: no attribute
access on Python objects, no format specs, no calls, no expressions. Braces that do not
form a placeholder over a known name stay as written. Values are escaped by where they
land: a field that is exactly one placeholder takes the value itself (a JSON body gets
the object, not its text); inside a URL a value is percent-encoded; a header value with
CR, LF or NUL is refused; everywhere else non-strings become compact JSON text. A
missing path renders as an empty string and is reported to the caller.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from .errors import PermanentError

MAX_OUTPUT_CHARS = 1_000_000
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)((?:\.[A-Za-z0-9_\-]+|\[\d{1,6}\])*)\}")
STEP = re.compile(r"\.([A-Za-z0-9_\-]+)|\[(\d{1,6})\]")
#: Fields never rendered: code is data to the sandbox, never a template; a chain's
#: steps are rendered one by one when each runs.
RAW_FIELDS = frozenset({"code", "tasks"})
MISSING = object()


class TemplateError(PermanentError):
    """A template could not be rendered safely."""


def lookup(scope: Mapping[str, Any], name: str, path: str) -> Any:
    """The value at ``name`` + ``path`` in plain JSON data, or the missing marker."""
    if name not in scope:
        return MISSING
    value = scope[name]
    for key, index in STEP.findall(path):
        if key and isinstance(value, Mapping) and key in value:
            value = value[key]
        elif index and isinstance(value, list) and int(index) < len(value):
            value = value[int(index)]
        else:
            return MISSING
    return value


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def render_text(
    template: str,
    scope: Mapping[str, Any],
    *,
    escape: Callable[[str], str] = lambda text: text,
    missing: list[str] | None = None,
) -> str:
    def substitute(match: re.Match[str]) -> str:
        name, path = match.group(1), match.group(2)
        if name not in scope:
            return match.group(0)
        value = lookup(scope, name, path)
        if value is MISSING:
            if missing is not None:
                missing.append(match.group(0))
            return ""
        return escape(as_text(value))

    rendered = PLACEHOLDER.sub(substitute, template)
    if len(rendered) > MAX_OUTPUT_CHARS:
        raise TemplateError(f"a rendered field is longer than {MAX_OUTPUT_CHARS} characters")
    return rendered


def _url_escape(text: str) -> str:
    return quote(text, safe="")


def _header_safe(text: str) -> str:
    if any(ch in text for ch in "\r\n\x00"):
        raise TemplateError("a header value would contain a line break or NUL")
    return text


def render_value(
    value: Any,
    scope: Mapping[str, Any],
    *,
    path: tuple[str, ...] = (),
    missing: list[str] | None = None,
) -> Any:
    """Render every string inside ``value`` (a JSON-like action config)."""
    if isinstance(value, Mapping):
        return {
            key: (
                item
                if key in RAW_FIELDS and not path
                else render_value(item, scope, path=(*path, str(key)), missing=missing)
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [render_value(item, scope, path=path, missing=missing) for item in value]
    if not isinstance(value, str):
        return value
    whole = PLACEHOLDER.fullmatch(value)
    in_headers = "headers" in path[:-1]
    if whole and whole.group(1) in scope and not in_headers:
        found = lookup(scope, whole.group(1), whole.group(2))
        if found is MISSING:
            if missing is not None:
                missing.append(value)
            return ""
        is_structured = "body" in path or "value" in path or "values" in path
        return found if is_structured else as_text(found)
    field = path[-1] if path else ""
    if in_headers:
        return render_text(value, scope, escape=_header_safe, missing=missing)
    if field == "url" or field.endswith("Url"):
        return render_text(value, scope, escape=_url_escape, missing=missing)
    return render_text(value, scope, missing=missing)
