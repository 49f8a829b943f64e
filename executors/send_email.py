"""send-email: one message through Django's configured mail backend (SMTP by default)."""

from __future__ import annotations

import smtplib
from typing import ClassVar, Literal

from django.core.mail import EmailMultiAlternatives, get_connection
from pydantic import Field, field_validator

from .base import TRIGGER_DEPTH_HEADER, ActionConfig, ActionResult, ExecutionContext, Executor
from .errors import PermanentError, RetryableError
from .fields import email_addresses, single_line

MAX_RECIPIENTS = 50


class SendEmailConfig(ActionConfig):
    type: Literal["send-email"]
    to: list[str] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    cc: list[str] = Field(default_factory=list, max_length=MAX_RECIPIENTS)
    bcc: list[str] = Field(default_factory=list, max_length=MAX_RECIPIENTS)
    subject: str = Field(min_length=1, max_length=998)
    body: str = Field(max_length=1_000_000)
    html: str | None = Field(default=None, max_length=2_000_000)

    _valid_addresses = field_validator("to", "cc", "bcc", mode="before")(email_addresses)
    _one_line = field_validator("subject")(single_line)


class SendEmailExecutor(Executor[SendEmailConfig]):
    action_type: ClassVar[str] = "send-email"
    Config = SendEmailConfig

    def execute(self, config: SendEmailConfig, ctx: ExecutionContext) -> ActionResult:
        # The same Message-ID on every attempt of this execution lets mail systems
        # drop a repeat if a retry follows a send whose outcome was lost.
        message_id = f"<{_id_part(ctx.idempotency_key)}@scheduler.local>"
        message = EmailMultiAlternatives(
            subject=config.subject,
            body=config.body,
            to=config.to,
            cc=config.cc,
            bcc=config.bcc,
            headers={
                "Message-ID": message_id,
                TRIGGER_DEPTH_HEADER: str(ctx.trigger_depth + 1),
            },
            connection=get_connection(timeout=ctx.egress.timeout),
        )
        if config.html:
            message.attach_alternative(config.html, "text/html")
        recipients = len(config.to) + len(config.cc) + len(config.bcc)
        ctx.log(f"sending {config.subject!r} to {recipients} recipient(s)")
        try:
            message.send(fail_silently=False)
        except smtplib.SMTPRecipientsRefused as exc:
            raise PermanentError(f"every recipient was refused: {sorted(exc.recipients)}") from None
        except smtplib.SMTPResponseException as exc:
            text = f"the mail server answered {exc.smtp_code}: {_decode(exc.smtp_error)}"
            if 400 <= exc.smtp_code < 500:
                raise RetryableError(text) from None
            raise PermanentError(text) from None
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:
            raise RetryableError(
                f"could not send the e-mail: {type(exc).__name__}: {exc}"
            ) from None
        ctx.log("sent")
        return ActionResult(
            output={
                "messageId": message_id,
                "to": config.to,
                "cc": config.cc,
                "bccCount": len(config.bcc),
                "subject": config.subject,
            }
        )


def _decode(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _id_part(key: str) -> str:
    """An idempotency key as the left part of a Message-ID (dot-atom characters only)."""
    return "".join(c if c.isalnum() or c in "-." else "-" for c in key) or "message"
