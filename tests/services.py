"""Real services the tests talk to: skip without them on a laptop, fail in CI."""

from __future__ import annotations

import os
import socket
import warnings
from typing import Any, NoReturn

import pytest

CI = os.environ.get("CI", "").lower() == "true"
POSTGRES = ("127.0.0.1", int(os.environ.get("TEST_POSTGRES_PORT", 5432)))
REDIS = ("127.0.0.1", int(os.environ.get("TEST_REDIS_PORT", 6379)))
POSTGRES_URL = f"postgres://postgres@{POSTGRES[0]}:{POSTGRES[1]}"
REDIS_URL = f"redis://{REDIS[0]}:{REDIS[1]}"


def reachable(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=1):
            return True
    except OSError:
        return False


def unavailable(message: str, *, remedy: str, label: str) -> NoReturn:
    """Something a test needs is missing: skip loudly (a warning says ``remedy``), or fail
    when CI=true."""
    if CI:
        pytest.fail(f"{message}, and CI=true requires it")
    # stacklevel 3: the warning points at the test that asked for it.
    warnings.warn(f"SKIPPING: {message}; {remedy}", stacklevel=3)
    pytest.skip(f"{label}: {message}")


def require(name: str, address: tuple[str, int]) -> None:
    """Skip (loudly) when the service is absent; fail when CI=true."""
    if reachable(address):
        return
    message = f"{name} is not reachable at {address[0]}:{address[1]}"
    unavailable(message, remedy="start it to run this test", label="SERVICE MISSING")


def require_postgres() -> None:
    require("PostgreSQL", POSTGRES)


def require_redis() -> None:
    require("Redis", REDIS)


def another_session(dbname: str | None = None) -> Any:
    """A second PostgreSQL session (autocommit) on the server of Django's test database,
    to its database or to ``dbname``: to alter a table or end a backend behind the ORM's
    connection."""
    import psycopg
    from django.db import connection

    params = connection.get_connection_params()
    return psycopg.connect(
        host=params.get("host"),
        port=params.get("port"),
        user=params.get("user"),
        dbname=dbname or params.get("dbname"),
        autocommit=True,
    )
