"""send-email through Django's SMTP backend to a real aiosmtpd server on loopback."""

from __future__ import annotations

from typing import Any

import pytest

from executors.errors import ConfigError, PermanentError, RetryableError
from executors.send_email import SendEmailExecutor
from tests.executor_ctx import make_ctx
from tests.smtp_inbox import Inbox, smtp_fixture  # noqa: F401 - the smtp fixture


def send(action: dict[str, Any], key: str = "exec-1") -> Any:
    executor = SendEmailExecutor()
    ctx, _ = make_ctx(idempotency_key=key)
    return executor.execute(executor.validate(action), ctx)


def test_the_guide_email_arrives(smtp: Inbox) -> None:
    result = send(
        {
            "type": "send-email",
            "to": "user@example.com",
            "subject": "Daily Report",
            "body": "Here is your daily report...",
        }
    )
    [envelope] = smtp.envelopes
    assert envelope.mail_from == "scheduler@example.org"
    assert envelope.rcpt_tos == ["user@example.com"]
    message = smtp.message()
    assert message["Subject"] == "Daily Report" and message["To"] == "user@example.com"
    assert message.get_payload(decode=True).decode().strip() == "Here is your daily report..."
    assert result.output["messageId"] == message["Message-ID"]
    assert "exec-1" in message["Message-ID"]
    assert message["X-Scheduler-Trigger-Depth"] == "1"  # loop protection for mail triggers


def test_cc_bcc_and_html_alternative(smtp: Inbox) -> None:
    send(
        {
            "type": "send-email",
            "to": ["a@example.com", "b@example.com"],
            "cc": "c@example.com",
            "bcc": ["hidden@example.com"],
            "subject": "Weekly",
            "body": "plain text",
            "html": "<p>rich <b>text</b></p>",
        }
    )
    [envelope] = smtp.envelopes
    assert sorted(envelope.rcpt_tos) == [
        "a@example.com",
        "b@example.com",
        "c@example.com",
        "hidden@example.com",
    ]
    message = smtp.message()
    assert message["Cc"] == "c@example.com" and message["Bcc"] is None
    parts = {
        part.get_content_type(): part.get_payload(decode=True).decode()
        for part in message.walk()
        if not part.is_multipart()
    }
    assert parts == {"text/plain": "plain text", "text/html": "<p>rich <b>text</b></p>"}


def test_retries_keep_the_same_message_id(smtp: Inbox) -> None:
    for _ in range(2):
        send(
            {"type": "send-email", "to": "a@example.com", "subject": "s", "body": "b"}, key="exec-7"
        )
    assert smtp.message(0)["Message-ID"] == smtp.message(1)["Message-ID"]


def test_refused_recipient_is_permanent(smtp: Inbox) -> None:
    smtp.reject_rcpt.add("nobody@example.com")
    with pytest.raises(PermanentError, match="refused"):
        send({"type": "send-email", "to": "nobody@example.com", "subject": "s", "body": "b"})


def test_temporary_server_failure_is_retryable(smtp: Inbox) -> None:
    smtp.fail_data = "451 try again later"
    with pytest.raises(RetryableError, match="451"):
        send({"type": "send-email", "to": "a@example.com", "subject": "s", "body": "b"})


def test_no_server_is_retryable(settings: Any) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", 9
    with pytest.raises(RetryableError, match="could not send"):
        send({"type": "send-email", "to": "a@example.com", "subject": "s", "body": "b"})


@pytest.mark.parametrize(
    ("action", "path"),
    [
        ({"type": "send-email", "subject": "s", "body": "b"}, "to"),
        ({"type": "send-email", "to": "not-an-address", "subject": "s", "body": "b"}, "to"),
        ({"type": "send-email", "to": ["a@example.com", 5], "subject": "s", "body": "b"}, "to"),
        (
            {
                "type": "send-email",
                "to": "a@example.com",
                "subject": "a\r\nBcc: x@evil.test",
                "body": "b",
            },
            "subject",
        ),
        ({"type": "send-email", "to": "a@example.com", "body": "b"}, "subject"),
        (
            {"type": "send-email", "to": "a@example.com", "subject": "s", "body": "b", "from": "x"},
            "from",
        ),
    ],
)
def test_config_errors_name_the_field(action: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        SendEmailExecutor().validate(action)
    assert path in [p for p, _ in caught.value.errors]
