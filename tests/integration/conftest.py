from __future__ import annotations

import email
import json
from collections.abc import Iterator, Mapping
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from tests.http_receiver import Receiver
from tests.integration.stack import Stack, free_port, wait_until
from tests.services import require_postgres, require_redis
from tests.smtp_inbox import Inbox

CREATE_TASKS = """
from datetime import timedelta
from django.contrib.auth import get_user_model
from django.utils import timezone
from tasks_app.services.definitions import task_create
owner, _ = get_user_model().objects.get_or_create(username="it")
result = []
for spec in SPECS:
    spec = dict(spec)
    if "in_seconds" in spec:
        spec["run_at"] = timezone.now() + timedelta(seconds=spec.pop("in_seconds"))
    result.append(str(task_create(owner=owner, **spec).id))
"""


def create_tasks(stack: Stack, *specs: dict[str, Any]) -> list[str]:
    return stack.orm(f"SPECS = {json.dumps(list(specs))}\n{CREATE_TASKS}")


def make_stack(mode: str, workdir: Path, extra_env: Mapping[str, str] | None = None) -> Stack:
    """A stack in ``mode``; ``extra_env`` is added to its processes' environment last."""
    if mode == "postgres-redis":
        require_postgres()
        require_redis()
    return Stack(mode, workdir, extra_env)


@pytest.fixture(scope="module")
def http() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


class Mailbox:
    """A real SMTP server (aiosmtpd) on loopback for a module's stack: ``env`` points the
    processes' Django mail settings at it; ``wait_for`` waits for matching messages."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.inbox = Inbox()
        self.port = free_port()
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)

    @property
    def env(self) -> dict[str, str]:
        return {
            "EMAIL_HOST": "127.0.0.1",
            "EMAIL_PORT": str(self.port),
            "EMAIL_USE_TLS": "false",
            "EMAIL_HOST_USER": "",
            "EMAIL_HOST_PASSWORD": "",
            "DEFAULT_FROM_EMAIL": "scheduler@example.org",
        }

    def messages(self, to: str, subject: str = "") -> list[tuple[list[str], Message]]:
        """(envelope recipients, message) of the mail to ``to`` whose subject has ``subject``."""
        found = []
        for envelope in list(self.inbox.envelopes):
            message = email.message_from_bytes(envelope.content)
            if to in envelope.rcpt_tos and subject in str(message["Subject"] or ""):
                found.append((list(envelope.rcpt_tos), message))
        return found

    def wait_for(
        self,
        to: str,
        subject: str = "",
        count: int = 1,
        timeout: float = 30.0,
        stack: Stack | None = None,
    ) -> list[tuple[list[str], Message]]:
        """Wait for ``count`` messages; on a timeout, show what ``stack``'s processes said."""
        try:
            return wait_until(
                lambda: (got := self.messages(to, subject)) and len(got) >= count and got,
                timeout,
                interval=0.2,
                message=f"expected {count} message(s) to {to} with {subject!r} within "
                f"{timeout}s; {len(self.inbox.envelopes)} message(s) in all",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{stack.log_tail(80) if stack else ''}") from None


@pytest.fixture(scope="module")
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox()
    box.controller.start()
    try:
        yield box
    finally:
        box.controller.stop()
