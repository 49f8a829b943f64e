"""The email trigger: a real SMTP receiver (the one `manage.py receive_email` runs, on a
free loopback port) and real smtplib clients. A message to a task's address starts it;
unknown, paused and foreign addresses and unwanted senders are refused at RCPT TO."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from tasks_app.auth import token_issue
from tasks_app.conf import RUN_TASK_NAME
from tasks_app.models import ExecutionTrigger, ScheduledTask, TaskExecution, TaskMailbox
from tasks_app.services import executions
from tasks_app.services.definitions import task_create, task_pause, task_resume, task_update
from tasks_app.services.host import owner_files_root
from tasks_app.services.inbound_email import (
    InboundHandler,
    build_controller,
    message_parse,
    safe_filename,
    sender_allowed,
    task_email_address,
    unique_name,
)
from tests.broker import published
from tests.http_receiver import Receiver

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = "mail.test"
MAX_BYTES = 200_000
MAX_RECIPIENTS = 5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def mail_conf(settings: Any, tmp_path: Path) -> Any:
    settings.SCHEDULER_INBOUND_EMAIL_DOMAIN = DOMAIN
    settings.SCHEDULER_INBOUND_EMAIL_MAX_BYTES = MAX_BYTES
    settings.SCHEDULER_INBOUND_EMAIL_MAX_RECIPIENTS = MAX_RECIPIENTS
    settings.SCHEDULER_FILES_DIR = tmp_path / "files"
    return settings


@pytest.fixture
def smtp_port(mail_conf: Any, memory_broker: Any) -> Iterator[int]:
    """The receiver, built and started as the command does, on a free loopback port."""
    port = free_port()
    controller = build_controller(hostname="127.0.0.1", port=port, handler=InboundHandler())
    controller.start()
    yield port
    controller.stop()


def email_task(owner: Any, name: str = "Inbox", **config: Any) -> ScheduledTask:
    return task_create(
        owner=owner,
        name=name,
        type="trigger",
        trigger={"type": "email", "config": config},
        action={"type": "webhook", "url": "https://example.org/hook", "body": {"s": "x"}},
    )


def address_of(task: ScheduledTask) -> str:
    address = task_email_address(task)
    assert address is not None
    return address


def message(
    to: str,
    *,
    sender: str = "alice@example.org",
    subject: str = "Quarterly numbers",
    message_id: str | None = "<q3-1@example.org>",
    attachments: list[tuple[str, str, bytes]] = (),  # type: ignore[assignment]
    **headers: str,
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"Alice Example <{sender}>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = "Tue, 05 Nov 2024 10:00:00 +0000"
    if message_id:
        msg["Message-ID"] = message_id
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("Hello,\nthe figures are attached.\n")
    msg.add_alternative("<p>Hello, the <b>figures</b> are attached.</p>", subtype="html")
    for filename, content_type, data in attachments:
        maintype, subtype = content_type.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg


def send(port: int, msg: EmailMessage, *, sender: str = "alice@example.org", to: Any = None) -> Any:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.send_message(msg, from_addr=sender, to_addrs=to or msg["To"])


def files_of(owner_id: int) -> list[Path]:
    root = owner_files_root(owner_id)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# --- the acceptance path --------------------------------------------------------------------


def test_mail_to_a_tasks_address_starts_it_with_the_message(
    user: Any, smtp_port: int, memory_broker: Any
) -> None:
    task = email_task(user)
    address = address_of(task)
    assert address.startswith("t-") and address.endswith(f"@{DOMAIN}")
    pdf = b"%PDF-1.4\x00\x01\x02 binary \xff" * 50
    csv = b"region,total\nnorth,12\n"
    msg = message(
        address,
        attachments=[("report.pdf", "application/pdf", pdf), ("totals.csv", "text/csv", csv)],
    )

    assert send(smtp_port, msg) == {}

    [execution] = TaskExecution.objects.filter(task=task)
    assert execution.trigger == ExecutionTrigger.EMAIL
    assert execution.status == "queued"
    payload = execution.payload
    assert payload["subject"] == "Quarterly numbers"
    assert (payload["from"], payload["fromName"]) == ("alice@example.org", "Alice Example")
    assert payload["to"] == address and payload["envelopeFrom"] == "alice@example.org"
    assert payload["text"] == "Hello,\nthe figures are attached.\n"
    assert payload["html"].strip() == "<p>Hello, the <b>figures</b> are attached.</p>"
    assert payload["messageId"] == "<q3-1@example.org>"
    assert payload["date"] == "2024-11-05T10:00:00+00:00"
    assert (payload["textTruncated"], payload["htmlTruncated"]) == (False, False)
    listed = [(a["name"], a["type"], a["size"]) for a in payload["attachments"]]
    assert listed == [("report.pdf", "application/pdf", len(pdf)), ("totals.csv", "text/csv", 22)]
    root = owner_files_root(user.pk)
    for entry, data in zip(payload["attachments"], (pdf, csv), strict=True):
        assert entry["path"].startswith("/inbox/")
        saved = root / entry["path"].lstrip("/")
        assert saved.read_bytes() == data
    assert published(memory_broker) == [
        (RUN_TASK_NAME, {"execution_id": str(execution.pk), "attempt": 1})
    ]


def test_a_message_to_two_tasks_starts_each_once(user: Any, smtp_port: int) -> None:
    first, second = email_task(user, "one"), email_task(user, "two")
    to = [address_of(first), address_of(second), address_of(first).upper()]
    send(smtp_port, message(", ".join(to[:2])), to=to)
    assert TaskExecution.objects.filter(task=first).count() == 1
    assert TaskExecution.objects.filter(task=second).count() == 1


# --- refusals -------------------------------------------------------------------------------


def test_unknown_and_foreign_addresses_are_refused_at_rcpt(user: Any, smtp_port: int) -> None:
    task = email_task(user)
    local = address_of(task).split("@")[0]
    for to in ("t-0000000000@" + DOMAIN, f"{local}@elsewhere.example", "nobody"):
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            send(smtp_port, message(to), to=[to])
        [(code, _reply)] = refused.value.recipients.values()
        assert code == 550, to
    assert not TaskExecution.objects.exists()
    assert files_of(user.pk) == []


def test_a_paused_task_or_one_no_longer_on_email_refuses_mail(user: Any, smtp_port: int) -> None:
    task = email_task(user)
    address = address_of(task)
    task_pause(task=task)
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(smtp_port, message(address))
    task_resume(task=task)
    send(smtp_port, message(address))
    assert TaskExecution.objects.filter(task=task).count() == 1

    task_update(task=task, trigger={"type": "webhook", "config": {}})
    assert task_email_address(task) is None
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(smtp_port, message(address, message_id="<other@example.org>"))
    task_update(task=task, trigger={"type": "email", "config": {}})
    assert task_email_address(task) == address, "changing back keeps the address"


def test_allowed_senders_are_enforced(user: Any, smtp_port: int) -> None:
    task = email_task(user, allowedSenders=["Boss@Corp.example", "@partner.example"])
    address = address_of(task)
    send(
        smtp_port,
        message(address, sender="boss@corp.example", message_id="<1@x>"),
        sender="boss@corp.example",
    )
    send(
        smtp_port,
        message(address, sender="ann@partner.example", message_id="<2@x>"),
        sender="ann@partner.example",
    )
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(smtp_port, message(address, sender="eve@evil.example"), sender="eve@evil.example")
    with pytest.raises(smtplib.SMTPRecipientsRefused):  # a null sender (bounce) is no one
        send(smtp_port, message(address, message_id="<3@x>"), sender="<>")
    # An allowed envelope does not let another author in.
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(
            smtp_port,
            message(address, sender="eve@evil.example", message_id="<4@x>"),
            sender="boss@corp.example",
        )
    assert refused.value.smtp_code == 550
    senders = sorted(e.payload["from"] for e in TaskExecution.objects.filter(task=task))
    assert senders == ["ann@partner.example", "boss@corp.example"]


def test_an_oversized_message_is_refused_with_552(user: Any, smtp_port: int) -> None:
    task = email_task(user)
    address = address_of(task)
    big = message(address, attachments=[("big.bin", "application/octet-stream", b"x" * MAX_BYTES)])
    # A client that announces the size (ESMTP SIZE) is refused at MAIL FROM ...
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        send(smtp_port, big)
    assert refused.value.smtp_code == 552
    # ... and one that does not, when the data runs over.
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
        client.ehlo()
        assert client.mail("alice@example.org")[0] == 250
        assert client.rcpt(address)[0] == 250
        assert client.data(big.as_string())[0] == 552
    assert not TaskExecution.objects.exists()
    assert files_of(user.pk) == []


def test_too_many_recipients_are_deferred(user: Any, smtp_port: int) -> None:
    tasks = [email_task(user, f"t{i}") for i in range(MAX_RECIPIENTS + 1)]
    to = [address_of(t) for t in tasks]
    refused = send(smtp_port, message(to[0]), to=to)
    assert list(refused) == [to[-1]] and refused[to[-1]][0] == 452
    assert TaskExecution.objects.count() == MAX_RECIPIENTS


# --- attachments, duplicates, loops ---------------------------------------------------------


def test_a_malicious_attachment_name_stays_inside_the_owners_folder(
    user: Any, smtp_port: int
) -> None:
    task = email_task(user)
    evil = [
        ("../../etc/passwd", "text/plain", b"root:x:0:0"),
        ("..\\..\\windows\\passwd", "text/plain", b"second"),
        ("..", "application/octet-stream", b"dots"),
        ("/abs/path/.hidden", "application/octet-stream", b"hidden"),
    ]
    send(smtp_port, message(address_of(task), attachments=evil))
    [execution] = TaskExecution.objects.filter(task=task)
    names = [a["name"] for a in execution.payload["attachments"]]
    assert names == ["passwd", "passwd (2)", "attachment-3.bin", "hidden"]
    root = owner_files_root(user.pk)
    saved = files_of(user.pk)
    assert [p.read_bytes() for p in saved] == [b"dots", b"hidden", b"root:x:0:0", b"second"]
    for path in saved:
        assert path.resolve().is_relative_to(root) and path.parent.parent == root / "inbox"


def test_the_same_message_id_twice_starts_one_run(user: Any, smtp_port: int) -> None:
    task = email_task(user)
    msg = message(address_of(task), attachments=[("a.txt", "text/plain", b"a")])
    assert send(smtp_port, msg) == {}
    assert send(smtp_port, msg) == {}, "a retried delivery is accepted, not run again"
    assert TaskExecution.objects.filter(task=task).count() == 1
    assert len(files_of(user.pk)) == 1
    send(smtp_port, message(address_of(task), message_id="<another@example.org>"))
    assert TaskExecution.objects.filter(task=task).count() == 2


def test_automatic_replies_are_accepted_but_start_nothing(user: Any, smtp_port: int) -> None:
    task = email_task(user)
    send(smtp_port, message(address_of(task), Auto_Submitted="auto-replied"))
    assert not TaskExecution.objects.exists()
    send(smtp_port, message(address_of(task), message_id="<n@x>", Auto_Submitted="no"))
    assert TaskExecution.objects.count() == 1


def test_long_bodies_are_cut_and_marked(user: Any, smtp_port: int) -> None:
    task = email_task(user)
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.org", address_of(task), "long"
    msg.set_content("y" * 150_000)
    send(smtp_port, msg)
    payload = TaskExecution.objects.get(task=task).payload
    assert len(payload["text"]) == 100_000 and payload["textTruncated"] is True
    assert payload["html"] == "" and payload["messageId"] is None


# --- templates: {email.subject} in an action ------------------------------------------------


def test_an_action_can_use_email_subject(
    user: Any, smtp_port: int, receiver: Receiver, egress_allow_loopback: None, settings: Any
) -> None:
    settings.SCHEDULER_TASK_TIME_LIMIT = 60
    task = task_create(
        owner=user,
        name="Forward",
        type="trigger",
        trigger={"type": "email", "config": {}},
        action={
            "type": "webhook",
            "url": f"{receiver.url}/mail",
            "body": {"s": "{email.subject}", "from": "{email.from}", "n": "{email_payload.to}"},
        },
    )
    send(smtp_port, message(address_of(task), subject="Invoice #42 & more"))
    [execution] = TaskExecution.objects.filter(task=task)
    claimed = executions.execution_claim(execution_id=str(execution.pk), attempt=1, worker="w:1")
    assert claimed is not None
    assert executions.execution_run(execution=claimed).status == "completed"
    [request] = receiver.received("/mail")
    assert request.json() == {
        "s": "Invoice #42 & more",
        "from": "alice@example.org",
        "n": address_of(task),
    }


# --- the API --------------------------------------------------------------------------------


@pytest.fixture
def api(user: Any, mail_conf: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_issue(user)}")
    return client


EMAIL_TASK = {
    "name": "Mail in",
    "type": "trigger",
    "trigger": {"type": "email", "config": {"allowedSenders": ["@example.org"]}},
    "action": {"type": "webhook", "url": "https://example.org/hook"},
}


def test_the_task_json_shows_its_email_address(api: APIClient) -> None:
    created = api.post("/api/tasks", EMAIL_TASK, format="json")
    assert created.status_code == 201, created.json()
    address = created.json()["emailAddress"]
    mailbox = TaskMailbox.objects.get()
    assert address == f"{mailbox.local_part}@{DOMAIN}"
    assert api.get(f"/api/tasks/{created.json()['id']}").json()["emailAddress"] == address
    assert api.get("/api/tasks").json()["results"][0]["emailAddress"] == address

    hook = api.post(
        "/api/tasks", {**EMAIL_TASK, "trigger": {"type": "webhook", "config": {}}}, format="json"
    ).json()
    assert hook["emailAddress"] is None
    changed = api.patch(f"/api/tasks/{hook['id']}", {"trigger": EMAIL_TASK["trigger"]}, "json")
    assert changed.json()["emailAddress"].endswith(f"@{DOMAIN}")
    # The address is read-only: a task sent back as it was read keeps it.
    again = api.put(f"/api/tasks/{hook['id']}", {**changed.json(), "emailAddress": "x@y"}, "json")
    assert (
        again.status_code == 200 and again.json()["emailAddress"] == changed.json()["emailAddress"]
    )
    assert TaskMailbox.objects.count() == 2


def test_listing_email_tasks_costs_the_same_queries_for_5_or_50(
    api: APIClient, django_assert_num_queries: Any
) -> None:
    def create(n: int) -> None:
        for i in range(n):
            api.post("/api/tasks", {**EMAIL_TASK, "name": f"m{i}"}, format="json")

    create(5)
    with django_assert_num_queries(3):
        listed = api.get("/api/tasks").json()["results"]
    assert len(listed) == 5 and all(t["emailAddress"] for t in listed)
    create(45)
    with django_assert_num_queries(3):
        assert len(api.get("/api/tasks").json()["results"]) == 50


# --- parsing and names, without SMTP ------------------------------------------------------


@pytest.mark.django_db(transaction=False)
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\x\\evil.exe", "evil.exe"),
        ("a\x00b.txt", "ab.txt"),
        ("...", "fallback"),
        ("  .env ", "env"),
        ("", "fallback"),
        (None, "fallback"),
        ("line\nbreak.txt", "linebreak.txt"),
        ("é" * 300 + ".pdf", "é" * 98 + ".pdf"),
    ],
)
def test_safe_filename(raw: str | None, expected: str) -> None:
    assert safe_filename(raw, "fallback") == expected


@pytest.mark.django_db(transaction=False)
def test_unique_name_and_sender_rules() -> None:
    taken: set[str] = set()
    assert [unique_name(n, taken) for n in ("a.txt", "A.txt", "a.txt", "b")] == [
        "a.txt",
        "A (2).txt",
        "a (3).txt",
        "b",
    ]
    assert sender_allowed("anyone@x.org", [])
    assert sender_allowed("Boss@Corp.example", ["boss@corp.example"])
    assert sender_allowed("ann@partner.example", ["@partner.example"])
    assert sender_allowed("ann@partner.example", ["partner.example"])
    assert not sender_allowed("ann@sub.partner.example", ["@partner.example"])
    assert not sender_allowed("", ["@partner.example"])


@pytest.mark.django_db(transaction=False)
def test_parse_html_only_forwarded_and_odd_charsets() -> None:
    raw = (
        b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.org>\r\n"
        b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/html; charset=x-unknown\r\n\r\n<p>hi \xe9</p>\r\n"
        b"--b\r\nContent-Type: message/rfc822\r\n\r\n"
        b"From: x@example.org\r\nSubject: inner\r\n\r\ninner body\r\n"
        b"--b--\r\n"
    )
    parsed = message_parse(raw)
    assert (parsed.from_address, parsed.from_name) == ("j@example.org", "Jürgen")
    assert parsed.subject == "Grüße"
    assert parsed.text == "" and parsed.html.startswith("<p>hi ")
    [forwarded] = parsed.attachments
    assert (forwarded.name, forwarded.type) == ("attachment-1.eml", "message/rfc822")
    assert b"inner body" in forwarded.data


# --- the command ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=False)
def test_the_command_serves_smtp_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCHEDULER_", "DATABASE_"))}
    env.update(
        SCHEDULER_DATA_DIR=str(tmp_path / "var"),
        SCHEDULER_SMTP_PORT=str(port),
        SCHEDULER_INBOUND_EMAIL_DOMAIN=DOMAIN,
        PYTHONUNBUFFERED="1",
    )
    process = subprocess.Popen(
        [sys.executable, "manage.py", "receive_email"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
                    code, banner = client.ehlo()
                    break
            except OSError:
                assert time.monotonic() < deadline, "the receiver did not start"
                time.sleep(0.2)
        assert code == 250 and banner.startswith(DOMAIN.encode())
        idle = smtplib.SMTP("127.0.0.1", port, timeout=5)  # an open session must not block
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        idle.close()
    finally:
        if process.poll() is None:
            process.kill()
    output = process.stdout.read().decode() if process.stdout else ""
    assert f"Receiving mail for *@{DOMAIN} on 127.0.0.1:{port}" in output
    assert "Stopped" in output


def test_a_task_saved_outside_the_services_gets_its_address_too(user: Any) -> None:
    """The admin and plain ORM saves go through the same post_save hook as the API."""
    task = ScheduledTask(
        owner=user,
        name="from the admin",
        type="trigger",
        trigger={"type": "email", "config": {}},
        action={"type": "webhook", "url": "https://example.com/x"},
    )
    task.save()
    assert TaskMailbox.objects.filter(task=task).exists()


def test_mail_from_our_own_runs_counts_toward_the_trigger_depth(user: Any, smtp_port: int) -> None:
    """A send-email action mailing its own task's address would loop: our outgoing mail
    carries X-Scheduler-Trigger-Depth, and past the limit the run is recorded failed."""
    from tasks_app.services.triggers import MAX_TRIGGER_DEPTH

    task = email_task(user)
    to = address_of(task)
    send(port=smtp_port, msg=message(to, message_id="<d1@x>", X_Scheduler_Trigger_Depth="2"))
    send(
        port=smtp_port,
        msg=message(to, message_id="<d2@x>", X_Scheduler_Trigger_Depth=str(MAX_TRIGGER_DEPTH + 1)),
    )
    first, second = TaskExecution.objects.filter(task=task).order_by("queued_at")
    assert (first.trigger_depth, first.status) == (2, "queued")
    assert second.trigger_depth == MAX_TRIGGER_DEPTH + 1
    assert second.status == "failed" and second.error.startswith("trigger loop:")
