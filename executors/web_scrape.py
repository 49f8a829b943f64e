"""web-scrape: fetch one page through the egress module and extract text, HTML or an
attribute from the elements a CSS selector matches (or the whole page's text).

The page is decoded as a browser would: the Content-Type charset, else the document's own
``<meta>`` declaration, else detection on the raw bytes (a byte-order mark always wins).
Items, each item's length and the total result are capped, and ``truncated`` says so.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from email.message import Message
from typing import Any, ClassVar, Literal
from urllib.parse import urljoin

import soupsieve
from bs4 import BeautifulSoup, CData, NavigableString, Tag
from bs4.dammit import EncodingDetector, UnicodeDammit
from pydantic import Field, ValidationInfo, field_validator

from . import egress, fields
from .base import ActionConfig, ActionResult, ExecutionContext, Executor
from .errors import PermanentError, RetryableError

MAX_LIMIT = 1000
MAX_ITEM_CHARS = 20_000
MAX_TOTAL_CHARS = 50_000
ELLIPSIS = "…"
DEFAULT_HEADERS = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "User-Agent": "scheduled-tasks-web-scrape/1.0",
}
MARKUP_TYPES = frozenset({"text/html", "application/xhtml+xml", "text/xml", "application/xml"})
BINARY_MAIN_TYPES = frozenset({"image", "audio", "video", "font", "model"})
BINARY_TYPES = frozenset(
    {"application/pdf", "application/zip", "application/gzip", "application/octet-stream"}
)
# Encodings browsers read as windows-1252 (the WHATWG Encoding Standard's labels).
WINDOWS_1252_ALIASES = frozenset({"iso8859-1", "ascii", "cp1252"})
BOMS = (b"\xef\xbb\xbf", b"\xfe\xff", b"\xff\xfe")
SKIPPED_TAGS = frozenset({"script", "style", "noscript", "template", "head"})
BLOCK_TAGS = frozenset(
    "address article aside blockquote br caption dd details dialog div dl dt fieldset "
    "figcaption figure footer form h1 h2 h3 h4 h5 h6 header hgroup hr li main nav ol p pre "
    "section summary table tbody tfoot thead tr ul".split()
)
WHITESPACE = re.compile(r"\s+")
CELL_TAGS = frozenset({"td", "th"})
URL_ATTRIBUTES = frozenset({"href", "src", "action", "poster", "cite", "data-src"})


class WebScrapeConfig(ActionConfig):
    type: Literal["web-scrape"]
    url: str = Field(max_length=2048)
    # ``extract`` and ``attribute`` come before ``selector`` so that its check can see them.
    extract: Literal["text", "html", "attribute"] = "text"
    attribute: str | None = Field(default=None, min_length=1, max_length=100, validate_default=True)
    selector: str | None = Field(default=None, min_length=1, max_length=1000, validate_default=True)
    limit: int = Field(default=100, ge=1, le=MAX_LIMIT)
    headers: dict[str, str] = Field(default_factory=dict, max_length=50)
    timeout: float = Field(default=30.0, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return egress.check_http_url(value)

    @field_validator("attribute")
    @classmethod
    def _attribute_for_extract(cls, value: str | None, info: ValidationInfo) -> str | None:
        extract = info.data.get("extract")
        if extract == "attribute" and value is None:
            raise ValueError("is required when extract is 'attribute'")
        if extract in {"text", "html"} and value is not None:
            raise ValueError("is only used when extract is 'attribute'")
        return value

    @field_validator("selector")
    @classmethod
    def _valid_selector(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            if info.data.get("extract") == "attribute":
                raise ValueError("is required when extract is 'attribute'")
            return None
        try:
            soupsieve.compile(value)
        except soupsieve.SelectorSyntaxError as exc:
            reason = str(exc).splitlines()[0]
            raise ValueError(f"is not a valid CSS selector: {reason}") from None
        except Exception as exc:  # noqa: BLE001 - soupsieve raises plain errors for some input
            raise ValueError(f"is not a valid CSS selector: {exc}") from None
        return value

    _valid_headers = field_validator("headers")(fields.http_headers)


class WebScrapeExecutor(Executor[WebScrapeConfig]):
    action_type: ClassVar[str] = "web-scrape"
    Config = WebScrapeConfig

    def execute(self, config: WebScrapeConfig, ctx: ExecutionContext) -> ActionResult:
        shown = egress.redact(config.url)
        ctx.log(f"GET {shown}")
        response = egress.request(
            "GET", config.url, ctx.egress, headers=_headers(config.headers), timeout=config.timeout
        )
        ctx.log(f"answered {response.status} ({len(response.content)} bytes)")
        _check_status(response, shown)
        content_type = _header(response.headers, "Content-Type")
        _check_textual(content_type, shown)
        markup, encoding = decode(response.content, content_type)
        soup = BeautifulSoup(markup, "html.parser")
        if config.selector is None and not _is_markup(content_type):
            page = normalise(markup)  # plain text, CSV, JSON: its own lines
            raw_items, more = ([page] if page else []), False
        else:
            raw_items, more = _extract(soup, config, response.url)
        items, cut = cap_items(raw_items)
        ctx.log(f"{len(items)} item(s), decoded as {encoding}")
        # The items are capped already; the newlines between them may add a few characters.
        text, text_cut = cap("\n".join(items), MAX_TOTAL_CHARS)
        return ActionResult(
            output={
                "url": egress.redact(response.url),
                "status": response.status,
                "title": _title(soup),
                "encoding": encoding,
                "count": len(items),
                "truncated": more or cut or text_cut,
                "items": items,
                "text": text,
            }
        )


# --- fetching ------------------------------------------------------------------------


def _headers(extra: dict[str, str]) -> dict[str, str]:
    given = {name.lower() for name in extra}
    defaults = {k: v for k, v in DEFAULT_HEADERS.items() if k.lower() not in given}
    return {**defaults, **extra}


def _header(headers: dict[str, str], name: str) -> str:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), "")


def _check_status(response: egress.EgressResponse, shown: str) -> None:
    if 200 <= response.status < 300:
        return
    message = f"GET {shown} answered HTTP {response.status}"
    if response.status == 429 or response.status >= 500:
        raise RetryableError(message)
    raise PermanentError(message)


def _is_markup(content_type: str) -> bool:
    mime = _content_type(content_type)
    return mime in MARKUP_TYPES or mime.endswith("+xml")


def _check_textual(content_type: str, shown: str) -> None:
    mime = _content_type(content_type)
    if mime.split("/")[0] in BINARY_MAIN_TYPES or mime in BINARY_TYPES:
        raise PermanentError(f"GET {shown} answered {mime}, not a page with text")


# --- decoding ------------------------------------------------------------------------


def _content_type(value: str) -> str:
    message = Message()
    message["Content-Type"] = value or "text/html"
    return message.get_content_type()


def header_charset(value: str) -> str | None:
    """The charset parameter of a Content-Type value, if it names a known codec."""
    if not value:
        return None
    message = Message()
    message["Content-Type"] = value
    charset = message.get_content_charset()
    return charset if charset and _codec(charset) else None


def _codec(name: str) -> str | None:
    try:
        return codecs.lookup(name).name
    except (LookupError, ValueError):
        return None


def _browser_encodings(label: str | None) -> list[str]:
    """How a browser reads a declared label: latin-1 and ascii mean windows-1252 (which
    leaves five bytes undefined, so the label itself follows as a fallback)."""
    codec = _codec(label) if label else None
    if codec is None or label is None:
        return []
    return ["windows-1252", label] if codec in WINDOWS_1252_ALIASES else [label]


def decode(content: bytes, content_type: str) -> tuple[str, str]:
    """The page as text and the encoding used: a byte-order mark, else the Content-Type
    charset, else the document's meta charset, else UTF-8 if the bytes are valid UTF-8,
    else detection (UnicodeDammit), else UTF-8 with replacements."""
    known: list[str] = []
    if not content.startswith(BOMS):
        known += _browser_encodings(header_charset(content_type))
        known += _browser_encodings(EncodingDetector.find_declared_encoding(content, is_html=True))
    # Valid UTF-8 is a far better guess than statistical detection on a short page.
    dammit = UnicodeDammit(
        content, known_definite_encodings=known, user_encodings=["utf-8"], is_html=True
    )
    if dammit.unicode_markup is None:
        return content.decode("utf-8", errors="replace"), "utf-8"
    return dammit.unicode_markup, dammit.original_encoding or "utf-8"


# --- extraction ----------------------------------------------------------------------


def _extract(soup: BeautifulSoup, config: WebScrapeConfig, base_url: str) -> tuple[list[str], bool]:
    """The raw items and whether more elements matched than ``limit``."""
    if config.selector is None:
        if config.extract == "html":
            page = str(soup).strip()
            return ([page] if page else []), False
        page = "\n".join(part for part in (_title(soup), element_text(soup)) if part)
        return ([page] if page else []), False
    matched = soup.select(config.selector, limit=config.limit + 1)
    more = len(matched) > config.limit
    elements = matched[: config.limit]
    if config.extract == "html":
        return [str(element).strip() for element in elements], more
    if config.extract == "attribute":
        assert config.attribute is not None  # checked by the config
        base = _base_url(soup, base_url)
        values = (_attribute(element, config.attribute, base) for element in elements)
        return [value for value in values if value is not None], more
    return [element_text(element) for element in elements], more


def _attribute(element: Tag, name: str, base: str) -> str | None:
    value = element.get(name)
    if value is None:
        return None
    text = value if isinstance(value, str) else " ".join(value)
    if name.lower() in URL_ATTRIBUTES and text.strip():
        return urljoin(base, text.strip())
    return collapse(text)


def _base_url(soup: BeautifulSoup, page_url: str) -> str:
    base = soup.find("base", href=True)
    href = base.get("href") if isinstance(base, Tag) else None
    return urljoin(page_url, href) if isinstance(href, str) else page_url


def _title(soup: BeautifulSoup) -> str | None:
    title = soup.title
    if title is None:
        return None
    return collapse(title.get_text(" ")) or None


_BREAK = object()


def _pieces(element: Tag) -> Iterator[str]:
    """The element's text, a line break around each block element and a space around
    each table cell; scripts, styles and the head are left out (no recursion, so deeply
    nested pages cannot exhaust the stack)."""
    stack: list[Any] = list(reversed(element.contents))
    while stack:
        node = stack.pop()
        if node is _BREAK:
            yield "\n"
        elif isinstance(node, Tag):
            if node.name in SKIPPED_TAGS:
                continue
            separator = "\n" if node.name in BLOCK_TAGS else " " if node.name in CELL_TAGS else ""
            if separator:
                yield separator
                stack.append(_BREAK if separator == "\n" else " ")
            stack.extend(reversed(node.contents))
        elif isinstance(node, str):
            if isinstance(node, NavigableString) and type(node) not in (NavigableString, CData):
                continue  # comments, doctypes, processing instructions
            yield WHITESPACE.sub(" ", node)  # source line breaks are only spaces


def element_text(element: Tag) -> str:
    return normalise("".join(_pieces(element)))


def collapse(text: str) -> str:
    """All runs of whitespace, line breaks too, become one space."""
    return " ".join(text.split())


def normalise(text: str) -> str:
    """Runs of whitespace within a line become one space; blank lines go. (Line breaks in
    the text nodes are gone already: only block elements break lines.)"""
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def cap(text: str, limit: int) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    return text[: limit - len(ELLIPSIS)] + ELLIPSIS, True


def cap_items(items: list[str]) -> tuple[list[str], bool]:
    """Each item at most MAX_ITEM_CHARS, all of them at most MAX_TOTAL_CHARS."""
    kept: list[str] = []
    total = 0
    truncated = False
    for item in items:
        text, cut = cap(item, MAX_ITEM_CHARS)
        truncated |= cut
        room = MAX_TOTAL_CHARS - total
        if room <= len(ELLIPSIS):
            return kept, True
        if len(text) > room:
            text, truncated = cap(text, room)[0], True
        kept.append(text)
        total += len(text)
    return kept, truncated
