"""GET /api/health answers 200 when the database and the broker answer, 503 otherwise."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from scheduler_project.celery import app as celery_app

pytestmark = pytest.mark.django_db


@pytest.fixture
def broker_url() -> Iterator[Any]:
    original = celery_app.conf.broker_url

    def use(url: str) -> None:
        celery_app.conf.broker_url = url
        celery_app._after_fork()  # drop pooled connections to the previous broker

    yield use
    use(original)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_healthy_without_credentials(client: Any) -> None:
    response = client.get("/api/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"]["ok"] is True and body["broker"]["ok"] is True


def test_unreachable_broker_is_a_503_within_seconds(client: Any, broker_url: Any) -> None:
    broker_url(f"redis://127.0.0.1:{closed_port()}/0")
    started = time.monotonic()
    response = client.get("/api/health")
    assert time.monotonic() - started < 10
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["broker"]["ok"] is False and body["database"]["ok"] is True
