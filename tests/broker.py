"""Celery's in-memory transport for tests that check what gets published."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import current_app


@pytest.fixture
def memory_broker() -> Iterator[Any]:
    """Publish to Celery's in-memory transport instead of the embedded filesystem queue."""
    app = current_app._get_current_object()
    saved = (app.conf.broker_url, app.conf.broker_transport_options)
    app.conf.broker_url, app.conf.broker_transport_options = "memory://", {}
    app._after_fork()  # drop cached connection/producer pools
    with app.connection_for_read() as conn:
        conn.SimpleQueue("celery").clear()
    yield app
    app.conf.broker_url, app.conf.broker_transport_options = saved
    app._after_fork()


def published_messages(app: Any) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(task name, kwargs, embed) of each message waiting in the queue, consumed."""
    return [(headers["task"], kwargs, embed) for headers, (_args, kwargs, embed) in _consumed(app)]


def published_headers(app: Any) -> list[dict[str, Any]]:
    """The headers of each message waiting in the queue, consumed."""
    return [headers for headers, _payload in _consumed(app)]


def _consumed(app: Any) -> list[tuple[dict[str, Any], Any]]:
    messages = []
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue("celery")
        while queue.qsize():
            message = queue.get(timeout=1)
            messages.append((message.headers, message.payload))
            message.ack()
    return messages


def published(app: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(name, kwargs) for name, kwargs, _embed in published_messages(app)]
