"""Field checks that several action configs share (used as pydantic field validators:
they raise ValueError with the reason)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_email


def email_addresses(value: Any) -> list[str]:
    """One e-mail address or a list of them, as a list; each must be valid."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ValueError("must be an e-mail address or a list of them")
    for item in items:
        try:
            validate_email(item)
        except DjangoValidationError:
            raise ValueError(f"{item!r} is not an e-mail address") from None
    return items


def single_line(value: str | None) -> str | None:
    """Refuse a line break (a header value must stay one line)."""
    if value is not None and ("\r" in value or "\n" in value):
        raise ValueError("must be a single line")
    return value


#: RFC 9110 token characters: what a header name may contain.
HEADER_NAME_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


def http_headers(value: dict[str, str]) -> dict[str, str]:
    """Header names are tokens; values stay on one line (no header injection)."""
    for name, text in value.items():
        if not name or not set(name.lower()) <= HEADER_NAME_CHARS:
            raise ValueError(f"{name!r} is not a valid header name")
        if "\r" in text or "\n" in text or "\0" in text:
            raise ValueError(f"the value of {name!r} must be a single line")
    return value
