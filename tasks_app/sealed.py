"""Secret action headers, sealed at rest: the one place that knows which headers are
secret and how they are stored, shown and used.

A header of a ``webhook`` or ``web-scrape`` action (chain steps included) whose name says
it carries a credential (``Authorization``, ``X-Api-Key``, ``Cookie``, anything with
token, secret, password, key, signature, auth or credential in it) is stored as
``{"$sealed": "<Fernet token>"}`` under ``FIELD_ENCRYPTION_KEYS`` (the same keys and
rotation as every encrypted column). Readers see it masked (``MASK``); only the worker,
about to send the request, unseals it. Sending the mask back in an update keeps the
stored value, so a client can round-trip a task it read.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ValidationError

from .fields import decrypt, encrypt, rotate

MASK = "••••••"
SEALED = "$sealed"
#: Names of headers, query parameters and JSON keys whose (string) values are secrets.
SECRET_NAME = re.compile(
    r"authoriz|token|secret|key|passw|signature|cookie|credential|session|x-auth",
    re.IGNORECASE,
)
QUERY_PARAM = re.compile(r"([?&;])([^=&#\s\"'<>]+)=([^&#\s\"'<>]*)")
USERINFO = re.compile(r"(://[^/@:\s\"'<>]+:)([^/@\s\"'<>]+)@")
BEARER = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{6,}", re.IGNORECASE)


def is_secret_header(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def _is_sealed(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {SEALED} and isinstance(value[SEALED], str)


def _nodes(action: Any, path: str = "action") -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, action) of the action and of every chain step, at any depth."""
    if not isinstance(action, dict):
        return
    yield path, action
    steps = action.get("tasks")
    if action.get("type") == "chain" and isinstance(steps, list):
        for index, step in enumerate(steps):
            yield from _nodes(step, f"{path}.tasks[{index}]")


def _header_maps(action: Any, path: str = "action") -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, headers) of the action and of every chain step, at any depth."""
    for node_path, node in _nodes(action, path):
        headers = node.get("headers")
        if isinstance(headers, dict):
            yield f"{node_path}.headers", headers


def _transform(action: Any, change: Callable[[str, str, Any], Any]) -> Any:
    """A deep copy of ``action`` with each secret header's value replaced by
    ``change(path, name, value)``."""
    if not isinstance(action, dict):
        return action
    result = copy.deepcopy(action)
    for path, headers in _header_maps(result):
        for name, value in list(headers.items()):
            if isinstance(name, str) and is_secret_header(name):
                headers[name] = change(path, name, value)
    return result


def has_secrets(action: Any) -> bool:
    return any(
        is_secret_header(name)
        for _path, headers in _header_maps(action)
        for name in headers
        if isinstance(name, str)
    )


def _destination(node: Any) -> tuple[str | None, int | None] | None:
    url = node.get("url") if isinstance(node, dict) else None
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url)
        return (parts.hostname, parts.port)
    except ValueError:
        return (url, None)


def seal(action: Any, stored: Any = None) -> Any:
    """The action as it is stored: secret header values sealed. A value equal to the
    mask keeps what ``stored`` (the action as it was) has at the same place, unless the
    action there now sends to another host (a secret nobody can see must not be
    redirected: it has to be typed again)."""
    previous = {
        (f"{path}.headers", name): (value, _destination(node))
        for path, node in _nodes(stored)
        if isinstance(node.get("headers"), dict)
        for name, value in node["headers"].items()
        if _is_sealed(value)
    }
    destinations = {path: _destination(node) for path, node in _nodes(action)}

    def change(path: str, name: str, value: Any) -> Any:
        if _is_sealed(value):
            return value
        if value == MASK:
            kept = previous.get((path, name))
            node_path = path.removesuffix(".headers")
            if kept is None:
                raise ValidationError(
                    {f"{path}.{name}": ["is masked; send the secret value itself"]}
                )
            if kept[1] != destinations.get(node_path):
                raise ValidationError(
                    {f"{path}.{name}": ["the url's host changed: send the secret value again"]}
                )
            return kept[0]
        if isinstance(value, str):
            return {SEALED: encrypt(value)}
        return value  # not a string: validation reports it

    return _transform(action, change)


def for_validation(action: Any) -> Any:
    """The action as validation sees it: a sealed or masked value stands for a valid one
    (it was checked when it was given), a new clear-text value is checked as it is."""
    return _transform(
        action, lambda _p, _n, value: "sealed" if _is_sealed(value) or value == MASK else value
    )


def masked(action: Any) -> Any:
    """The action as readers see it (API, admin, exports): secrets replaced by the mask."""
    return _transform(action, lambda _p, _n, value: MASK if _is_sealed(value) else value)


def unsealed(action: Any) -> Any:
    """The action as the worker sends it: secrets in clear text."""
    return _transform(
        action, lambda _p, _n, value: decrypt(value[SEALED]) if _is_sealed(value) else value
    )


def resealed(action: Any) -> Any:
    """The action with every sealed value re-encrypted under the newest key."""
    return _transform(
        action,
        lambda _p, _n, value: {SEALED: rotate(value[SEALED])} if _is_sealed(value) else value,
    )


# --- masking any JSON for display (admin pages: actions, results, logs) -------------------


def _is_secret_item(key: Any, value: Any) -> bool:
    return _is_sealed(value) or (
        isinstance(key, str)
        and bool(SECRET_NAME.search(key))
        and isinstance(value, str)
        and value != ""
    )


def mask_text(text: str) -> str:
    """``text`` with secret-named URL query values, URL passwords and bearer credentials
    replaced by the mask."""

    def query(match: re.Match[str]) -> str:
        secret = match[3] and SECRET_NAME.search(unquote(match[2]))
        return f"{match[1]}{match[2]}={MASK}" if secret else match[0]

    text = QUERY_PARAM.sub(query, text)
    text = USERINFO.sub(lambda m: f"{m[1]}{MASK}@", text)
    return BEARER.sub(lambda m: f"{m[1]} {MASK}", text)


def masked_for_display(value: Any) -> Any:
    """A copy of any JSON value as operators see it: sealed values, string values under
    secret-looking keys (headers or not) and secrets inside strings masked."""
    if _is_sealed(value):
        return MASK
    if isinstance(value, dict):
        return {
            k: MASK if _is_secret_item(k, v) else masked_for_display(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [masked_for_display(item) for item in value]
    if isinstance(value, str):
        return mask_text(value)
    return value


def _restore_params(submitted: str, stored: str) -> str:
    """Masked query values of ``submitted`` taken back from the same parameter of
    ``stored`` (a URL edited around its secret)."""
    values = {m[2]: m[3] for m in QUERY_PARAM.finditer(stored)}

    def query(match: re.Match[str]) -> str:
        if match[3] == MASK and match[2] in values:
            return f"{match[1]}{match[2]}={values[match[2]]}"
        return match[0]

    return QUERY_PARAM.sub(query, submitted)


def unmasked(submitted: Any, stored: Any) -> Any:
    """``submitted`` (an edited copy of ``masked_for_display(stored)``) with each mask that
    is still where it was shown replaced by the stored value. A mask moved elsewhere, or
    kept in an object whose ``url`` now points to another host, stays (and is refused)."""
    if submitted == masked_for_display(stored):
        return copy.deepcopy(stored)
    if isinstance(submitted, dict) and isinstance(stored, dict):
        if _destination(submitted) != _destination(stored):
            return submitted
        return {
            key: copy.deepcopy(stored[key])
            if key in stored and _is_secret_item(key, stored[key]) and value == MASK
            else unmasked(value, stored.get(key))
            for key, value in submitted.items()
        }
    if isinstance(submitted, list) and isinstance(stored, list):
        return [
            unmasked(item, stored[index] if index < len(stored) else None)
            for index, item in enumerate(submitted)
        ]
    if isinstance(submitted, str) and isinstance(stored, str) and MASK in submitted:
        return _restore_params(submitted, stored)
    return submitted
