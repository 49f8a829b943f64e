"""A real SMTP server (aiosmtpd) on loopback that records the mail it accepts, and the
``smtp`` fixture pointing Django's SMTP backend at it. A test module imports both
(``from tests.smtp_inbox import Inbox, smtp_fixture``) and asks for ``smtp: Inbox``."""

from __future__ import annotations

import email
import socket
from collections.abc import Iterator
from email.message import Message
from typing import Any

import pytest
from aiosmtpd.controller import Controller


class Inbox:
    def __init__(self) -> None:
        self.envelopes: list[Any] = []
        self.reject_rcpt: set[str] = set()
        self.fail_data: str | None = None

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        if address in self.reject_rcpt:
            return "550 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.fail_data:
            return self.fail_data
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    def message(self, index: int = 0) -> Message:
        return email.message_from_bytes(self.envelopes[index].content)


@pytest.fixture(name="smtp")
def smtp_fixture(settings: Any) -> Iterator[Inbox]:
    inbox = Inbox()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    settings.EMAIL_USE_TLS = False
    settings.DEFAULT_FROM_EMAIL = "scheduler@example.org"
    yield inbox
    controller.stop()
