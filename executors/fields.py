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
