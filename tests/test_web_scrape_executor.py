"""executors.web_scrape.WebScrapeExecutor against the real loopback receiver."""

from __future__ import annotations

from typing import Any

import pytest

from executors.base import ActionResult, ExecutionContext
from executors.egress import EgressPolicy
from executors.errors import ConfigError, EgressRefused, PermanentError, RetryableError
from executors.web_scrape import (
    MAX_ITEM_CHARS,
    MAX_TOTAL_CHARS,
    WebScrapeConfig,
    WebScrapeExecutor,
)
from tests.executor_ctx import LOOPBACK, make_ctx
from tests.http_receiver import Receiver, Reply

EXECUTOR = WebScrapeExecutor()
HTML = "text/html"

PAGE = b"""<!DOCTYPE html>
<html><head><title>  Quarterly
  figures </title>
<style>.data-table { color: red }</style>
<script>var secret = "not text";</script></head>
<body>
<h1>Figures</h1>
<p>Some   <b>bold</b>
   words&nbsp;here.</p>
<!-- a comment that is not text -->
<table class="data-table">
  <tr><th>Region</th><th>Sales</th></tr>
  <tr><td>North</td><td>1,200</td></tr>
  <tr><td>South</td><td>950</td></tr>
</table>
<ul>
  <li class="item"><a href="/a?x=1" class="link main">First</a></li>
  <li class="item"><a href="https://other.example/b">Second</a></li>
  <li class="item"><a name="anchor">Third (no href)</a></li>
</ul>
</body></html>
"""


@pytest.fixture
def logs() -> list[str]:
    return []


@pytest.fixture
def ctx(logs: list[str]) -> ExecutionContext:
    return make_ctx(logs, egress=LOOPBACK)[0]


def run(raw: dict[str, Any], ctx: ExecutionContext) -> ActionResult:
    return EXECUTOR.execute(EXECUTOR.validate({"type": "web-scrape", **raw}), ctx)


def serve(receiver: Receiver, body: bytes, content_type: str = HTML, path: str = "/page") -> str:
    receiver.reply(path, Reply(body=body, headers={"Content-Type": content_type}))
    return f"{receiver.url}{path}"


# --- config validation -------------------------------------------------------------


def config_errors(raw: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        EXECUTOR.validate({"type": "web-scrape", **raw})
    return caught.value.errors


def test_guide_example_gets_defaults() -> None:
    config = EXECUTOR.validate(
        {"type": "web-scrape", "url": "https://example.com/data", "selector": ".data-table"}
    )
    assert config == WebScrapeConfig(
        type="web-scrape",
        url="https://example.com/data",
        selector=".data-table",
        extract="text",
        attribute=None,
        limit=100,
        headers={},
        timeout=30.0,
    )


@pytest.mark.parametrize("selector", ["div[", "a:unknown-pseudo", "p >", "##x", ""])
def test_invalid_selector_is_a_config_error_naming_selector(selector: str) -> None:
    [(path, message)] = config_errors({"url": "https://a.example/", "selector": selector})
    assert path == "selector"
    assert "valid CSS selector" in message or "at least 1 character" in message


def test_attribute_extraction_needs_an_attribute_and_a_selector() -> None:
    errors = config_errors({"url": "https://a.example/", "extract": "attribute"})
    assert errors == [
        ("attribute", "Value error, is required when extract is 'attribute'"),
        ("selector", "Value error, is required when extract is 'attribute'"),
    ]


def test_attribute_is_refused_for_other_extracts() -> None:
    assert config_errors({"url": "https://a.example/", "selector": "a", "attribute": "href"}) == [
        ("attribute", "Value error, is only used when extract is 'attribute'")
    ]


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ({"url": "ftp://a.example/"}, "url"),
        ({"url": "https://a.example/", "limit": 0}, "limit"),
        ({"url": "https://a.example/", "limit": 1001}, "limit"),
        ({"url": "https://a.example/", "extract": "json"}, "extract"),
        ({"url": "https://a.example/", "headers": {"X-A": "1\r\nX-B: 2"}}, "headers"),
        ({"url": "https://a.example/", "headers": {"Bad Name": "1"}}, "headers"),
        ({"url": "https://a.example/", "timeout": 301}, "timeout"),
        ({"url": "https://a.example/", "selectors": "p"}, "selectors"),
    ],
)
def test_bad_fields_are_named(raw: dict[str, Any], path: str) -> None:
    assert [p for p, _ in config_errors(raw)] == [path]


# --- extraction ----------------------------------------------------------------------


def test_selector_text_is_whitespace_normalised(receiver: Receiver, ctx: ExecutionContext) -> None:
    url = serve(receiver, PAGE)
    result = run({"url": url, "selector": ".data-table"}, ctx)
    assert result.output == {
        "url": url,
        "status": 200,
        "title": "Quarterly figures",
        "encoding": "utf-8",
        "count": 1,
        "truncated": False,
        "items": ["Region Sales\nNorth 1,200\nSouth 950"],
        "text": "Region Sales\nNorth 1,200\nSouth 950",
    }


def test_several_items_and_the_joined_text(receiver: Receiver, ctx: ExecutionContext) -> None:
    result = run({"url": serve(receiver, PAGE), "selector": "li.item"}, ctx)
    assert result.output["items"] == ["First", "Second", "Third (no href)"]
    assert result.output["count"] == 3
    assert result.output["text"] == "First\nSecond\nThird (no href)"


def test_html_extraction(receiver: Receiver, ctx: ExecutionContext) -> None:
    result = run({"url": serve(receiver, PAGE), "selector": "td", "extract": "html"}, ctx)
    assert result.output["items"] == ["<td>North</td>", "<td>1,200</td>", "<td>South</td>"] + [
        "<td>950</td>"
    ]


def test_attribute_extraction_resolves_links_and_skips_elements_without_it(
    receiver: Receiver, ctx: ExecutionContext
) -> None:
    url = serve(receiver, PAGE)
    result = run({"url": url, "selector": "li a", "extract": "attribute", "attribute": "href"}, ctx)
    assert result.output["items"] == [f"{receiver.url}/a?x=1", "https://other.example/b"]
    assert result.output["count"] == 2
    classes = run(
        {"url": url, "selector": "a.link", "extract": "attribute", "attribute": "class"}, ctx
    )
    assert classes.output["items"] == ["link main"]


def test_without_selector_the_page_text_is_one_item(
    receiver: Receiver, ctx: ExecutionContext
) -> None:
    result = run({"url": serve(receiver, PAGE)}, ctx)
    [item] = result.output["items"]
    assert item == (
        "Quarterly figures\nFigures\nSome bold words here.\nRegion Sales\nNorth 1,200\n"
        "South 950\nFirst\nSecond\nThird (no href)"
    )
    assert result.output["text"] == item
    assert "secret" not in item and "color" not in item and "comment" not in item


def test_without_selector_html_is_the_whole_document(
    receiver: Receiver, ctx: ExecutionContext
) -> None:
    result = run({"url": serve(receiver, b"<p>x</p>"), "extract": "html"}, ctx)
    assert result.output["items"] == ["<p>x</p>"]


def test_a_selector_matching_nothing_is_an_empty_result(
    receiver: Receiver, ctx: ExecutionContext
) -> None:
    result = run({"url": serve(receiver, PAGE), "selector": ".missing"}, ctx)
    assert (result.output["count"], result.output["items"], result.output["text"]) == (0, [], "")
    assert result.output["truncated"] is False


def test_plain_text_pages_are_read_too(receiver: Receiver, ctx: ExecutionContext) -> None:
    result = run({"url": serve(receiver, b"just  some\ntext", "text/plain")}, ctx)
    assert result.output["items"] == ["just some\ntext"]


# --- charsets ------------------------------------------------------------------------

LATIN = "Caf\xe9 \u201cna\xefve\u201d cr\xe8me br\xfbl\xe9e \u2013 \xa35"


def latin_page(meta: str = "") -> bytes:
    return f"<html><head>{meta}<title>t</title></head><body><p>{LATIN}</p></body></html>".encode(
        "windows-1252"
    )


@pytest.mark.parametrize(
    ("meta", "content_type"),
    [
        ('<meta charset="ISO-8859-1">', HTML),
        ('<meta http-equiv="Content-Type" content="text/html; charset=windows-1252">', HTML),
        ("", "text/html; charset=ISO-8859-1"),
        ("", "text/html; charset=windows-1252"),
    ],
)
def test_declared_legacy_charsets_read_as_a_browser_does(
    receiver: Receiver, ctx: ExecutionContext, meta: str, content_type: str
) -> None:
    # ISO-8859-1 is read as windows-1252 (as browsers do): 0x93/0x94/0x96 are quotes and dashes.
    result = run({"url": serve(receiver, latin_page(meta), content_type), "selector": "p"}, ctx)
    assert result.output["items"] == [LATIN]
    assert result.output["encoding"] == "windows-1252"


def test_header_charset_wins_over_meta(receiver: Receiver, ctx: ExecutionContext) -> None:
    body = f'<meta charset="iso-8859-1"><p>{LATIN}</p>'.encode()
    result = run({"url": serve(receiver, body, "text/html; charset=utf-8"), "selector": "p"}, ctx)
    assert (result.output["items"], result.output["encoding"]) == ([LATIN], "utf-8")


def test_meta_charset_is_used_when_the_header_names_none(
    receiver: Receiver, ctx: ExecutionContext
) -> None:
    body = '<meta charset="koi8-r"><p>Привет, мир</p>'.encode("koi8-r")
    result = run({"url": serve(receiver, body), "selector": "p"}, ctx)
    assert (result.output["items"], result.output["encoding"]) == (["Привет, мир"], "koi8-r")


def test_undeclared_utf8_is_detected(receiver: Receiver, ctx: ExecutionContext) -> None:
    body = f"<p>{LATIN} – ✓ 日本語</p>".encode()
    result = run({"url": serve(receiver, body), "selector": "p"}, ctx)
    assert result.output["items"] == [f"{LATIN} – ✓ 日本語"]


def test_a_byte_order_mark_wins_over_a_wrong_header(
    receiver: Receiver, ctx: ExecutionContext
) -> None:
    body = b"\xef\xbb\xbf" + f"<p>{LATIN}</p>".encode()
    result = run({"url": serve(receiver, body, "text/html; charset=iso-8859-1")}, ctx)
    assert result.output["items"] == [LATIN]


def test_an_unknown_header_charset_falls_back(receiver: Receiver, ctx: ExecutionContext) -> None:
    body = f'<meta charset="utf-8"><p>{LATIN}</p>'.encode()
    result = run({"url": serve(receiver, body, "text/html; charset=no-such"), "selector": "p"}, ctx)
    assert result.output["items"] == [LATIN]


# --- caps ----------------------------------------------------------------------------


def test_limit_caps_the_items_and_marks_truncated(
    receiver: Receiver, ctx: ExecutionContext
) -> None:
    body = "".join(f"<li>item {n}</li>" for n in range(10)).encode()
    result = run({"url": serve(receiver, body), "selector": "li", "limit": 3}, ctx)
    assert result.output["items"] == ["item 0", "item 1", "item 2"]
    assert (result.output["count"], result.output["truncated"]) == (3, True)


def test_long_items_are_cut(receiver: Receiver, ctx: ExecutionContext) -> None:
    body = b"<p>" + b"word " * 10_000 + b"</p><p>short</p>"
    result = run({"url": serve(receiver, body), "selector": "p"}, ctx)
    first, second = result.output["items"]
    assert len(first) == MAX_ITEM_CHARS and first.endswith("…")
    assert second == "short"
    assert result.output["truncated"] is True


def test_the_whole_result_is_capped(receiver: Receiver, ctx: ExecutionContext) -> None:
    body = b"".join(b"<p>" + b"x" * 9_000 + b"</p>" for _ in range(20))
    result = run({"url": serve(receiver, body), "selector": "p"}, ctx)
    assert sum(len(item) for item in result.output["items"]) <= MAX_TOTAL_CHARS
    assert len(result.output["text"]) <= MAX_TOTAL_CHARS
    assert result.output["count"] < 20 and result.output["truncated"] is True


def test_a_page_over_the_egress_size_limit_is_refused(receiver: Receiver, logs: list[str]) -> None:
    ctx, _ = make_ctx(logs, egress=EgressPolicy(allow=("127.0.0.1",), max_bytes=1000))
    with pytest.raises(PermanentError, match="larger than the 1000-byte limit"):
        run({"url": serve(receiver, b"<p>" + b"x" * 5000 + b"</p>")}, ctx)


# --- requests and failures -----------------------------------------------------------


def test_headers_reach_the_server(receiver: Receiver, ctx: ExecutionContext) -> None:
    url = serve(receiver, PAGE)
    run({"url": url, "headers": {"X-Token": "t0k", "user-agent": "mine/1"}}, ctx)
    [got] = receiver.received("/page")
    assert got.method == "GET"
    assert got.headers["X-Token"] == "t0k"
    assert [v for k, v in got.headers.items() if k.lower() == "user-agent"] == ["mine/1"]
    assert "text/html" in got.headers["Accept"]


def test_redirects_are_followed_and_the_url_is_redacted(
    receiver: Receiver, ctx: ExecutionContext, logs: list[str]
) -> None:
    receiver.reply("/old", Reply(status=302, headers={"Location": "/page?token=secret"}))
    serve(receiver, PAGE)
    result = run({"url": f"{receiver.url}/old?key=abc", "selector": "h1"}, ctx)
    assert result.output["url"] == f"{receiver.url}/page"
    assert result.output["items"] == ["Figures"]
    assert "abc" not in " ".join(logs) and "secret" not in " ".join(logs)


def test_not_found_is_permanent(receiver: Receiver, ctx: ExecutionContext) -> None:
    receiver.reply("/gone", Reply(status=404, body=b"<p>no</p>", headers={"Content-Type": HTML}))
    with pytest.raises(PermanentError) as caught:
        run({"url": f"{receiver.url}/gone"}, ctx)
    assert type(caught.value) is PermanentError
    assert str(caught.value) == f"GET {receiver.url}/gone answered HTTP 404"


@pytest.mark.parametrize("status", [429, 503])
def test_rate_limits_and_server_errors_are_retryable(
    receiver: Receiver, ctx: ExecutionContext, status: int
) -> None:
    receiver.reply("/busy", Reply(status=status, body=b"busy", headers={"Content-Type": HTML}))
    with pytest.raises(RetryableError, match=f"answered HTTP {status}$"):
        run({"url": f"{receiver.url}/busy"}, ctx)


def test_a_binary_response_is_refused(receiver: Receiver, ctx: ExecutionContext) -> None:
    with pytest.raises(PermanentError, match="answered image/png, not a page with text"):
        run({"url": serve(receiver, b"\x89PNG\r\n", "image/png")}, ctx)


def test_loopback_is_refused_under_default_settings(receiver: Receiver, logs: list[str]) -> None:
    from tasks_app.conf import scheduler_settings

    ctx, _ = make_ctx(logs, egress=scheduler_settings().egress_policy())
    url = serve(receiver, PAGE)
    with pytest.raises(EgressRefused) as caught:
        run({"url": url}, ctx)
    assert "resolves to 127.0.0.1, which is not a public address" in str(caught.value)
    assert receiver.requests == []


def test_connection_refused_is_retryable(ctx: ExecutionContext) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RetryableError, match="failed to connect"):
        run({"url": f"http://127.0.0.1:{port}/x"}, ctx)
