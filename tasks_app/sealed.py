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

from django.core.exceptions import ValidationError

from .fields import decrypt, encrypt, rotate

MASK = "••••••"
SEALED = "$sealed"
SECRET_NAME = re.compile(
    r"auth|token|secret|passw|key|signature|cookie|credential|session", re.IGNORECASE
)


def is_secret_header(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def _is_sealed(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {SEALED} and isinstance(value[SEALED], str)


def _header_maps(action: Any, path: str = "action") -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, headers) of the action and of every chain step, at any depth."""
    if not isinstance(action, dict):
        return
    headers = action.get("headers")
    if isinstance(headers, dict):
        yield f"{path}.headers", headers
    steps = action.get("tasks")
    if action.get("type") == "chain" and isinstance(steps, list):
        for index, step in enumerate(steps):
            yield from _header_maps(step, f"{path}.tasks[{index}]")


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


def seal(action: Any, stored: Any = None) -> Any:
    """The action as it is stored: secret header values sealed. A value equal to the
    mask keeps what ``stored`` (the action as it was) has at the same place."""
    previous = {
        (path, name): value
        for path, headers in _header_maps(stored)
        for name, value in headers.items()
        if _is_sealed(value)
    }

    def change(path: str, name: str, value: Any) -> Any:
        if _is_sealed(value):
            return value
        if value == MASK:
            if (path, name) not in previous:
                raise ValidationError(
                    {f"{path}.{name}": ["is masked; send the secret value itself"]}
                )
            return previous[(path, name)]
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
