"""The email trigger: every email-triggered task has its own address,
``<local part>@SCHEDULER_INBOUND_EMAIL_DOMAIN``, and a message to it starts the task.

``python manage.py receive_email`` runs the SMTP receiver built here (aiosmtpd). A
recipient is checked at ``RCPT TO`` (our domain, a known mailbox, an active email-trigger
task, an allowed sender) and refused there otherwise. At ``DATA`` the message is parsed
(stdlib ``email``, policy ``default``), its attachments are saved under the owner's files
(``/inbox/<key>/<name>``), and one execution per recipient task is queued through
``triggers.trigger_start`` with the payload ``{from, to, subject, text, html, attachments,
messageId, date, ...}``; the 250 reply is sent after that has committed. A Message-ID
already delivered to a task (a sending MTA retrying) does not start it again.

aiosmtpd is imported only when a receiver is built, so the web and worker processes do
not need it.
"""

from __future__ import annotations

import functools
import logging
import mimetypes
import os
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from email import message_from_bytes
from email import policy as email_policy
from email.errors import MessageError
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any, TypeVar, cast

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, transaction
from django.utils import timezone

from executors.base import TRIGGER_DEPTH_HEADER
from executors.errors import PermanentError
from executors.file_operation import FILE_FLAGS, FilesRoot, display

from ..models import (
    ExecutionTrigger,
    ScheduledTask,
    TaskExecution,
    TaskMailbox,
    TaskStatus,
    TaskType,
    TriggerType,
)
from .host import owner_files_root
from .triggers import depth_from, trigger_start

if TYPE_CHECKING:
    from aiosmtpd.controller import Controller

logger = logging.getLogger(__name__)

LOCAL_PART_PREFIX = "t-"
INBOX_DIR = "inbox"
#: Characters of text and of HTML kept in a payload (the rest is cut, and marked so).
TEXT_LIMIT = 100_000
SUBJECT_LIMIT = 1_000
MAX_ATTACHMENTS = 100
MAX_MIME_DEPTH = 20
NAME_BYTES = 200
#: What the stdlib parser raises on mail it cannot make sense of (it mostly records defects).
PARSE_ERRORS = (ValueError, TypeError, IndexError, AttributeError, LookupError, MessageError)
TEMPFAIL = "451 4.3.0 Temporary failure, please try again later"

T = TypeVar("T")


class Refused(Exception):
    """A message (or recipient) we answer with an SMTP error ``reply``."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


# --- addresses ------------------------------------------------------------------------------


def inbound_domain() -> str:
    return str(settings.SCHEDULER_INBOUND_EMAIL_DOMAIN).strip().lower()


def is_email_trigger(task: ScheduledTask) -> bool:
    trigger = task.trigger if isinstance(task.trigger, dict) else {}
    return task.type == TaskType.TRIGGER and trigger.get("type") == TriggerType.EMAIL


def allowed_senders(task: ScheduledTask) -> list[str]:
    config = (task.trigger or {}).get("config") or {}
    senders = config.get("allowedSenders") or []
    return [str(s) for s in senders]


def new_local_part() -> str:
    """Random and unguessable: the address itself is what lets mail in."""
    return LOCAL_PART_PREFIX + secrets.token_hex(10)


def mailbox_ensure(*, task: ScheduledTask) -> TaskMailbox | None:
    """The task's mailbox, made on first need; None for a task without an email trigger.

    A mailbox outlives a change to another trigger (its address simply stops working)
    so that changing back restores the same address.
    """
    if not is_email_trigger(task):
        return None
    mailbox, _ = TaskMailbox.objects.get_or_create(
        task=task, defaults={"local_part": new_local_part()}
    )
    task.mailbox = mailbox  # cache it: task_to_json reads it next
    return mailbox


def mailbox_address(mailbox: TaskMailbox) -> str:
    return f"{mailbox.local_part}@{inbound_domain()}"


def task_email_address(task: ScheduledTask) -> str | None:
    """The address shown in the task's JSON (select_related("mailbox") avoids a query)."""
    if not is_email_trigger(task):
        return None
    try:
        mailbox = task.mailbox
    except TaskMailbox.DoesNotExist:
        return None
    return mailbox_address(mailbox)


def split_address(address: str) -> tuple[str, str]:
    """('Local', 'Domain') -> lower-cased (local part, domain); ('', '') when malformed."""
    local, at, domain = address.strip().strip("<>").rpartition("@")
    if not at or not local or not domain:
        return "", ""
    return local.lower(), domain.lower()


def sender_allowed(sender: str, allowed: Sequence[str]) -> bool:
    """Anyone when ``allowed`` is empty; else an exact address or an ``@domain`` rule."""
    if not allowed:
        return True
    local, domain = split_address(sender)
    if not local:
        return False
    address = f"{local}@{domain}"
    for rule in (r.strip().lower() for r in allowed):
        if rule.startswith("@") or "@" not in rule:
            if domain == rule.lstrip("@"):
                return True
        elif rule == address:
            return True
    return False


# --- database units (run in a worker thread of the SMTP loop) ----------------------------


def db_unit(func: Callable[..., T]) -> Callable[..., T]:
    """Like a request: drop stale or broken connections before and after the work."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        close_old_connections()
        try:
            return func(*args, **kwargs)
        finally:
            close_old_connections()

    return wrapper


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reply: str


def recipient_check(*, address: str, sender: str) -> Verdict:
    """Whether ``RCPT TO:<address>`` from ``MAIL FROM:<sender>`` is accepted."""
    local, domain = split_address(address)
    if not local or domain != inbound_domain():
        return Verdict(False, "550 5.7.1 Relaying denied: not a mailbox of this server")
    mailbox = TaskMailbox.objects.select_related("task").filter(local_part=local).first()
    if mailbox is None or not is_email_trigger(mailbox.task):
        return Verdict(False, "550 5.1.1 No such mailbox")
    if mailbox.task.status != TaskStatus.ACTIVE:
        return Verdict(False, "550 5.2.1 Mailbox disabled: the task is not active")
    if not sender_allowed(sender, allowed_senders(mailbox.task)):
        return Verdict(False, "550 5.7.1 Sender not allowed for this mailbox")
    return Verdict(True, "250 2.1.5 OK")


# --- parsing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attachment:
    name: str
    type: str
    data: bytes


@dataclass(frozen=True)
class ParsedMessage:
    from_address: str
    from_name: str
    subject: str
    text: str
    html: str
    text_truncated: bool
    html_truncated: bool
    message_id: str | None
    date: str | None
    auto_submitted: bool
    attachments: list[Attachment] = field(default_factory=list)
    #: Loop protection: mail sent by our own send-email actions says how deep it is.
    trigger_depth: int = 0

    def payload(
        self, *, to: str, envelope_from: str, attachments: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """The execution's payload (``{email.subject}`` etc. in templates)."""
        return {
            "from": self.from_address or envelope_from,
            "fromName": self.from_name,
            "to": to,
            "envelopeFrom": envelope_from,
            "subject": self.subject,
            "text": self.text,
            "html": self.html,
            "textTruncated": self.text_truncated,
            "htmlTruncated": self.html_truncated,
            "attachments": attachments,
            "messageId": self.message_id,
            "date": self.date,
        }


def clean_text(value: str) -> str:
    """Storable everywhere (no NUL, no lone surrogates)."""
    return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _capped(value: str, limit: int) -> tuple[str, bool]:
    value = clean_text(value)
    return (value[:limit], True) if len(value) > limit else (value, False)


def _header(message: EmailMessage, name: str) -> str:
    try:
        value = message[name]
    except PARSE_ERRORS:  # a header the parser cannot make sense of
        return ""
    return clean_text(str(value or "")).strip()


def _from(message: EmailMessage) -> tuple[str, str]:
    try:
        header = message["From"]
        addresses = getattr(header, "addresses", ()) if header is not None else ()
    except PARSE_ERRORS:
        return "", ""
    for address in addresses:
        if address.addr_spec and "@" in address.addr_spec:
            return clean_text(address.addr_spec), clean_text(address.display_name or "")
    return "", ""


def _date(message: EmailMessage) -> str | None:
    try:
        header = message["Date"]
    except PARSE_ERRORS:
        return None
    if header is None:
        return None
    moment = getattr(header, "datetime", None)
    return moment.isoformat() if moment is not None else clean_text(str(header))


def _text_of(part: EmailMessage | None) -> str:
    """A body part as text, with the wire's CRLF line ends made plain newlines."""
    if part is None:
        return ""
    try:
        text = str(part.get_content())
    except (LookupError, ValueError, AssertionError):  # unknown charset and the like
        raw = part.get_payload(decode=True)
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
    return text.replace("\r\n", "\n")


def _leaves(part: EmailMessage, depth: int = 0) -> Iterator[EmailMessage]:
    """Every leaf part; an attached message (message/rfc822) is one leaf."""
    if depth > MAX_MIME_DEPTH:
        raise Refused("554 5.6.0 Message nested too deeply")
    if part.get_content_type() == "message/rfc822" or not part.is_multipart():
        yield part
        return
    for sub in part.iter_parts():
        yield from _leaves(cast(EmailMessage, sub), depth + 1)


def _bytes_of(part: EmailMessage) -> bytes:
    if part.get_content_type() == "message/rfc822":
        try:
            inner = part.get_payload(0)
            return bytes(inner.as_bytes()) if hasattr(inner, "as_bytes") else b""
        except PARSE_ERRORS:
            return b""
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _is_attachment(part: EmailMessage) -> bool:
    """Leaves other than the chosen bodies; unnamed inline text is part of the body."""
    if part.get_filename() or part.get_content_disposition() == "attachment":
        return True
    return part.get_content_maintype() != "text"


def _attachments(message: EmailMessage, bodies: Sequence[EmailMessage | None]) -> list[Attachment]:
    found: list[Attachment] = []
    for part in _leaves(message):
        if any(part is body for body in bodies) or not _is_attachment(part):
            continue
        if len(found) >= MAX_ATTACHMENTS:
            raise Refused(f"552 5.3.4 Too many attachments (at most {MAX_ATTACHMENTS})")
        content_type = part.get_content_type()
        try:
            raw_name = part.get_filename()
        except PARSE_ERRORS:
            raw_name = None
        fallback = f"attachment-{len(found) + 1}{_extension(content_type)}"
        found.append(Attachment(safe_filename(raw_name, fallback), content_type, _bytes_of(part)))
    return found


def _extension(content_type: str) -> str:
    if content_type == "message/rfc822":
        return ".eml"
    return mimetypes.guess_extension(content_type) or ".bin"


def message_parse(content: bytes) -> ParsedMessage:
    message = cast(EmailMessage, message_from_bytes(content, policy=email_policy.default))
    text_part = message.get_body(preferencelist=("plain",))
    html_part = message.get_body(preferencelist=("html",))
    text, text_cut = _capped(_text_of(cast(EmailMessage | None, text_part)), TEXT_LIMIT)
    html, html_cut = _capped(_text_of(cast(EmailMessage | None, html_part)), TEXT_LIMIT)
    from_address, from_name = _from(message)
    auto = _header(message, "Auto-Submitted").lower()
    return ParsedMessage(
        from_address=from_address,
        from_name=from_name,
        subject=_header(message, "Subject")[:SUBJECT_LIMIT],
        text=text,
        html=html,
        text_truncated=text_cut,
        html_truncated=html_cut,
        message_id=_header(message, "Message-ID")[:255] or None,
        date=_date(message),
        auto_submitted=bool(auto) and not auto.startswith("no"),
        trigger_depth=depth_from({TRIGGER_DEPTH_HEADER: _header(message, TRIGGER_DEPTH_HEADER)}),
        attachments=_attachments(
            message, [cast(EmailMessage | None, text_part), cast(EmailMessage | None, html_part)]
        ),
    )


# --- attachments on disk ----------------------------------------------------------------


def safe_filename(raw: str | None, fallback: str) -> str:
    """A plain file name: no directories, no NUL or control characters, no leading dots,
    at most NAME_BYTES bytes of UTF-8 (the extension kept); ``fallback`` when nothing is left."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip().lstrip(".").strip()
    name = clean_text(name)
    if not name:
        return fallback
    stem, dot, suffix = name.rpartition(".")
    if not dot or len(suffix) > 16:
        stem, suffix = name, ""
    suffix = f".{suffix}" if suffix else ""
    while len((stem + suffix).encode()) > NAME_BYTES and stem:
        stem = stem[:-1]
    return (stem + suffix) or fallback


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``stem (2).ext`` and so on when a sibling already has it."""
    candidate, number = name, 1
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem:
        stem, suffix = name, ""
    while candidate.lower() in taken:
        number += 1
        candidate = f"{stem} ({number}){'.' + suffix if suffix else ''}"
    taken.add(candidate.lower())
    return candidate


def inbox_key() -> str:
    """A fresh folder name per message and owner: sortable, never reused."""
    return f"{timezone.now():%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def attachments_save(*, owner_id: int, attachments: Sequence[Attachment]) -> list[dict[str, Any]]:
    """Write the attachments into ``/inbox/<key>/`` of the owner's files; each entry is
    ``{name, type, size, path}`` with ``path`` relative to the owner's root (as
    file-operation actions take it)."""
    if not attachments:
        return []
    key = inbox_key()
    taken: set[str] = set()
    saved = []
    with FilesRoot(owner_files_root(owner_id)) as root, root.ensure_dir([INBOX_DIR, key]) as box:
        for attachment in attachments:
            name = unique_name(attachment.name, taken)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | FILE_FLAGS
            fd = os.open(name, flags, 0o644, dir_fd=box.dir_fd)
            with os.fdopen(fd, "wb") as handle:
                handle.write(attachment.data)
            saved.append(
                {
                    "name": name,
                    "type": attachment.type,
                    "size": len(attachment.data),
                    "path": display([INBOX_DIR, key, name]),
                }
            )
    return saved


# --- delivery -------------------------------------------------------------------------------


@dataclass
class Delivery:
    reply: str
    started: list[str] = field(default_factory=list)
    duplicates: int = 0
    message_id: str | None = None


def _recipient_tasks(recipients: Sequence[str]) -> list[tuple[str, ScheduledTask]]:
    """(address, task) of the active email-trigger tasks addressed, each task once."""
    wanted: dict[str, str] = {}
    for address in recipients:
        local, domain = split_address(address)
        if local and domain == inbound_domain():
            wanted.setdefault(local, f"{local}@{domain}")
    mailboxes = TaskMailbox.objects.select_related("task").filter(local_part__in=list(wanted))
    found: dict[Any, tuple[str, ScheduledTask]] = {}
    for mailbox in sorted(mailboxes, key=lambda m: m.local_part):
        task = mailbox.task
        if is_email_trigger(task) and task.status == TaskStatus.ACTIVE:
            found.setdefault(task.pk, (wanted[mailbox.local_part], task))
    return list(found.values())


def _seen(task_id: Any, message_id: str) -> bool:
    return TaskExecution.objects.filter(
        task_id=task_id, trigger=ExecutionTrigger.EMAIL, payload__messageId=message_id
    ).exists()


def _start(
    *, task_id: Any, message_id: str | None, payload: dict[str, Any], depth: int = 0
) -> str | None:
    """Queue the run unless the task stopped taking mail or already has this message."""
    with transaction.atomic():
        # The row lock serialises two deliveries of one message to one task.
        task = ScheduledTask.objects.select_for_update().filter(pk=task_id).first()
        if task is None or task.status != TaskStatus.ACTIVE or not is_email_trigger(task):
            return None
        if message_id and _seen(task_id, message_id):
            return None
        execution = trigger_start(
            task=task, trigger=ExecutionTrigger.EMAIL, payload=payload, depth=depth
        )
    return str(execution.pk)


def message_deliver(*, content: bytes, sender: str, recipients: Sequence[str]) -> Delivery:
    """Start every recipient task once for this message; the reply for ``DATA``."""
    parsed = message_parse(content)
    targets = _recipient_tasks(recipients)
    if not targets:
        raise Refused("550 5.1.1 No such mailbox (or no longer active)")
    author = parsed.from_address or sender
    targets = [(a, t) for a, t in targets if sender_allowed(author, allowed_senders(t))]
    if not targets:
        raise Refused("550 5.7.1 Sender not allowed for this mailbox")
    delivery = Delivery("250 2.0.0 OK: message accepted", message_id=parsed.message_id)
    if parsed.auto_submitted:  # auto-replies and bounces must not start runs (mail loops)
        delivery.reply = "250 2.0.0 OK: automatic message accepted, no task started"
        return delivery
    saved: dict[int, list[dict[str, Any]]] = {}
    for address, task in targets:
        if parsed.message_id and _seen(task.pk, parsed.message_id):
            delivery.duplicates += 1
            continue
        if task.owner_id not in saved:
            saved[task.owner_id] = attachments_save(
                owner_id=task.owner_id, attachments=parsed.attachments
            )
        payload = parsed.payload(to=address, envelope_from=sender, attachments=saved[task.owner_id])
        execution_id = _start(
            task_id=task.pk,
            message_id=parsed.message_id,
            payload=payload,
            depth=parsed.trigger_depth,
        )
        if execution_id is None:
            delivery.duplicates += 1
        else:
            delivery.started.append(execution_id)
    return delivery


@db_unit
def rcpt_verdict(*, address: str, sender: str) -> Verdict:
    try:
        return recipient_check(address=address, sender=sender)
    except Exception:
        logger.exception("inbound mail: recipient check failed for %s", address)
        return Verdict(False, TEMPFAIL)


@db_unit
def data_reply(*, content: bytes, sender: str, recipients: Sequence[str]) -> str:
    """Deliver and log one line (never the body); any failure is a temporary one."""
    started = time.monotonic()
    try:
        delivery = message_deliver(content=content, sender=sender, recipients=recipients)
    except Refused as refused:
        delivery = Delivery(refused.reply)
    except PermanentError as exc:
        logger.warning("inbound mail: attachments could not be stored: %s", exc)
        delivery = Delivery("554 5.3.0 Attachments could not be stored")
    except Exception:
        logger.exception("inbound mail from %s to %s failed", sender, ",".join(recipients))
        delivery = Delivery(TEMPFAIL)
    logger.info(
        "inbound mail %s from=<%s> to=%s bytes=%d -> %s started=%s duplicates=%d (%.0f ms)",
        delivery.message_id or "(no Message-ID)",
        sender,
        ",".join(recipients),
        len(content),
        delivery.reply.split(" ", 1)[0],
        ",".join(delivery.started) or "-",
        delivery.duplicates,
        (time.monotonic() - started) * 1000,
    )
    return delivery.reply


# --- the SMTP receiver ----------------------------------------------------------------------


class InboundHandler:
    """aiosmtpd handler: recipients checked at RCPT, runs started at DATA. The ORM work
    runs in a worker thread (sync_to_async), never in the event loop."""

    def __init__(self, *, max_recipients: int | None = None) -> None:
        self.max_recipients = max_recipients or int(settings.SCHEDULER_INBOUND_EMAIL_MAX_RECIPIENTS)
        self.in_flight = 0

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return "452 4.5.3 Too many recipients"
        verdict = await sync_to_async(rcpt_verdict)(
            address=address, sender=envelope.mail_from or ""
        )
        if verdict.accepted:
            envelope.rcpt_tos.append(address)
        else:
            logger.info("inbound mail refused at RCPT to=%s: %s", address, verdict.reply)
        return verdict.reply

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.in_flight += 1
        try:
            content = envelope.original_content or envelope.content or b""
            if isinstance(content, str):
                content = content.encode("utf-8", "surrogateescape")
            return await sync_to_async(data_reply)(
                content=content, sender=envelope.mail_from or "", recipients=envelope.rcpt_tos
            )
        finally:
            self.in_flight -= 1

    def wait_idle(self, timeout: float) -> bool:
        """Wait for messages being delivered to finish; False if some still are."""
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.in_flight


def build_controller(
    *,
    hostname: str | None = None,
    port: int | None = None,
    handler: InboundHandler | None = None,
) -> Controller:
    """The receiver (not started): listens on ``hostname:port`` (default the
    SCHEDULER_SMTP_* settings), refuses messages over SCHEDULER_INBOUND_EMAIL_MAX_BYTES."""
    from aiosmtpd.controller import Controller

    return Controller(
        handler or InboundHandler(),
        hostname=hostname or settings.SCHEDULER_SMTP_BIND,
        port=int(port or settings.SCHEDULER_SMTP_PORT),
        server_hostname=inbound_domain(),
        ident="scheduled-tasks inbound mail",
        data_size_limit=int(settings.SCHEDULER_INBOUND_EMAIL_MAX_BYTES),
        enable_SMTPUTF8=True,
    )


def controller_shutdown(controller: Controller, handler: InboundHandler, grace: float) -> None:
    """Stop taking connections, let deliveries under way finish (up to ``grace``
    seconds, so their 250 goes out after the commit), then stop the loop."""
    server = controller.server
    if server is not None:
        controller.loop.call_soon_threadsafe(server.close)
    if not handler.wait_idle(grace):
        logger.warning("inbound mail: stopping with %d deliveries under way", handler.in_flight)
    controller.stop()
