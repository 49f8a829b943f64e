"""google-workspace against googleapiclient's own HTTP mocks: each test checks the request
the library would send (method, URI, headers, body) and how Google's answers map to results
and to RetryableError / PermanentError. No network: discovery documents are the bundled ones."""

from __future__ import annotations

import base64
import email
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httplib2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import _exponential_backoff
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account
from googleapiclient.http import HttpMockSequence

from executors import google_workspace as gw
from executors.errors import ConfigError, PermanentError, RetryableError
from tests.executor_ctx import make_ctx

JSON = {"status": "200", "content-type": "application/json; charset=UTF-8"}
USER_INFO = {
    "type": "authorized_user",
    "client_id": "client-123.apps.googleusercontent.com",
    "client_secret": "very-secret-client-secret",
    "refresh_token": "1//very-secret-refresh-token",
}


class RecordingHttp(HttpMockSequence):
    """HttpMockSequence that records streamed bodies as bytes and whose entries may also be
    exceptions to raise (transport errors)."""

    def request(self, uri: str, method: str = "GET", body: Any = None, **kwargs: Any) -> Any:
        if hasattr(body, "read"):  # a chunk of a resumable upload
            body = body.read()
        if self._iterable and isinstance(self._iterable[0], BaseException):
            self.request_sequence.append((uri, method, body, kwargs.get("headers")))
            raise self._iterable.pop(0)
        return super().request(uri, method, body, **kwargs)


@dataclass
class Request:
    uri: str
    method: str
    body: Any
    headers: dict[str, str]

    @property
    def path(self) -> str:
        return unquote(urlsplit(self.uri).path)

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.uri).query)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Google:
    """The fake Google: queued answers in, the requests the library sent out."""

    answers: list[Any] = field(default_factory=list)
    http: RecordingHttp | None = None
    services: list[str] = field(default_factory=list)

    def answer(self, status: int = 200, body: Any = None, **headers: str) -> None:
        content = body if isinstance(body, str) else json.dumps(body or {})
        self.answers.append(({**JSON, "status": str(status), **headers}, content))

    def fail(self, exc: BaseException) -> None:
        self.answers.append(exc)

    def error(self, status: int, message: str, reason: str = "forbidden") -> None:
        errors = [{"message": message, "domain": "global", "reason": reason}]
        self.answer(status, {"error": {"code": status, "message": message, "errors": errors}})

    @property
    def requests(self) -> list[Request]:
        assert self.http is not None, "no client was built"
        return [
            Request(uri, method, body, dict(headers or {}))
            for uri, method, body, headers in self.http.request_sequence
        ]


@pytest.fixture
def google(monkeypatch: pytest.MonkeyPatch) -> Google:
    fake = Google()

    def http_factory(timeout: float) -> RecordingHttp:
        fake.http = RecordingHttp(fake.answers)
        return fake.http

    def credentials_factory(info: Any, service: str) -> user_credentials.Credentials:
        fake.services.append(service)
        return user_credentials.Credentials(token="test-token")

    monkeypatch.setattr(gw, "http_factory", http_factory)
    monkeypatch.setattr(gw, "credentials_factory", credentials_factory)
    return fake


class Host:
    def __init__(self, credentials: dict[str, Any] | None) -> None:
        self.credentials = credentials

    def report_data(self, *, period_days: int) -> dict[str, Any]:
        raise NotImplementedError

    def save_report(self, *, title: str, html: str, markdown: str) -> dict[str, Any]:
        raise NotImplementedError

    def google_credentials(self) -> dict[str, Any] | None:
        return self.credentials


def run(
    action: dict[str, Any],
    *,
    credentials: dict[str, Any] | None = USER_INFO,
    logs: list[str] | None = None,
    **context: Any,
) -> Any:
    executor = gw.GoogleWorkspaceExecutor()
    config = executor.validate({"type": "google-workspace", **action})
    ctx, _ = make_ctx(
        logs, idempotency_key=context.pop("key", "exec-1"), host=Host(credentials), **context
    )
    return executor.execute(config, ctx).output


def config_errors(action: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        gw.GoogleWorkspaceExecutor().validate({"type": "google-workspace", **action})
    return dict(caught.value.errors)


GMAIL = {
    "service": "gmail",
    "operation": "send",
    "to": ["ana@example.org"],
    "subject": "Weekly figures",
}


def text(part: Message) -> str:
    """A MIME part's decoded text, with the wire's CRLF line ends as LF."""
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode().replace("\r\n", "\n")


def parts(message: Message) -> list[Message]:
    payload = message.get_payload()
    assert isinstance(payload, list)
    return [part for part in payload if isinstance(part, Message)]


def sent_mail(request: Request) -> Message:
    raw = base64.urlsafe_b64decode(request.json()["raw"])
    return email.message_from_bytes(raw)


# -- gmail ----------------------------------------------------------------------------------


def test_gmail_send_posts_the_mime_message_as_me(google: Google) -> None:
    google.answer(body={"id": "msg-1", "threadId": "thr-1", "labelIds": ["SENT"]})
    output = run(
        {
            **GMAIL,
            "cc": "bo@example.org",
            "bcc": ["cy@example.org"],
            "body": "Hello Ana,\nthe numbers.",
            "html": "<p>Hello <b>Ana</b></p>",
        }
    )
    assert output == {"messageId": "msg-1", "threadId": "thr-1"}
    assert google.services == ["gmail"]
    [request] = google.requests
    assert request.method == "POST"
    assert request.uri.startswith("https://gmail.googleapis.com/gmail/v1/users/me/messages/send")
    assert request.headers["authorization"] == "Bearer test-token"
    message = sent_mail(request)
    assert message["To"] == "ana@example.org"
    assert message["Cc"] == "bo@example.org"
    assert message["Bcc"] == "cy@example.org"
    assert message["Subject"] == "Weekly figures"
    assert message.get_content_type() == "multipart/alternative"
    plain, html = parts(message)
    assert text(plain) == "Hello Ana,\nthe numbers.\n"
    assert html.get_content_type() == "text/html"
    assert "<b>Ana</b>" in text(html)


@pytest.mark.parametrize(
    ("previous", "expected"),
    [("from the last step", "from the last step"), ({"total": 3}, '{\n  "total": 3\n}')],
)
def test_gmail_body_defaults_to_the_previous_steps_result(
    google: Google, previous: Any, expected: str
) -> None:
    google.answer(body={"id": "msg-2", "threadId": "thr-2"})
    run(GMAIL, previous_result=previous)
    message = sent_mail(google.requests[0])
    assert message.get_content_type() == "text/plain"
    assert text(message).rstrip("\n") == expected


def test_gmail_without_any_body_is_refused_before_sending(google: Google) -> None:
    with pytest.raises(PermanentError, match="no body"):
        run(GMAIL)
    assert google.http is None or not google.http.request_sequence


# -- sheets ---------------------------------------------------------------------------------


def test_sheets_append_sends_rows_user_entered(google: Google) -> None:
    google.answer(
        body={
            "spreadsheetId": "sheet_ID-1",
            "tableRange": "Sheet1!A1:C4",
            "updates": {"updatedRange": "Sheet1!A5:C6", "updatedRows": 2, "updatedCells": 6},
        }
    )
    rows = [["2025-01-06", 42, "=A5*2"], ["2025-01-07", 3.5, True]]
    output = run(
        {
            "service": "sheets",
            "operation": "append",
            "spreadsheetId": "sheet_ID-1",
            "range": "Sheet1!A1",
            "values": rows,
        }
    )
    assert output == {
        "spreadsheetId": "sheet_ID-1",
        "updatedRange": "Sheet1!A5:C6",
        "updatedRows": 2,
    }
    [request] = google.requests
    assert request.method == "POST"
    assert request.path == "/v4/spreadsheets/sheet_ID-1/values/Sheet1!A1:append"
    assert request.query["valueInputOption"] == ["USER_ENTERED"]
    assert request.json() == {"values": rows}


# -- calendar -------------------------------------------------------------------------------

EVENT = {
    "service": "calendar",
    "operation": "createEvent",
    "summary": "Review",
    "description": "Figures of the week",
    "start": "2025-03-10T09:00:00+01:00",
    "end": "2025-03-10T09:30:00+01:00",
    "timezone": "Europe/Paris",
    "attendees": ["ana@example.org", "bo@example.org"],
}


def test_calendar_create_event_sends_the_event(google: Google) -> None:
    google.answer(body={"id": "evt", "htmlLink": "https://calendar.google.com/event?eid=x"})
    output = run(EVENT)
    assert output == {"eventId": "evt", "htmlLink": "https://calendar.google.com/event?eid=x"}
    [request] = google.requests
    assert request.method == "POST"
    assert request.path == "/calendar/v3/calendars/primary/events"
    event = request.json()
    assert event.pop("id") == gw._event_id("exec-1")
    assert event == {
        "summary": "Review",
        "description": "Figures of the week",
        "start": {"dateTime": "2025-03-10T09:00:00+01:00", "timeZone": "Europe/Paris"},
        "end": {"dateTime": "2025-03-10T09:30:00+01:00", "timeZone": "Europe/Paris"},
        "attendees": [{"email": "ana@example.org"}, {"email": "bo@example.org"}],
    }


def test_calendar_event_id_is_valid_and_stable_per_execution() -> None:
    event_id = gw._event_id("5f0c3c1e-0000-4000-8000-000000000000")
    assert event_id == gw._event_id("5f0c3c1e-0000-4000-8000-000000000000")
    assert event_id != gw._event_id("another-execution")
    assert 5 <= len(event_id) <= 1024
    assert set(event_id) <= set("0123456789abcdefghijklmnopqrstuv")


def test_calendar_retry_finds_the_event_an_earlier_attempt_created(google: Google) -> None:
    google.error(409, "The requested identifier already exists.", reason="duplicate")
    google.answer(body={"id": "evt", "htmlLink": "https://calendar.google.com/e"})
    output = run({**EVENT, "calendarId": "team@example.org"})
    assert output == {"eventId": "evt", "htmlLink": "https://calendar.google.com/e"}
    insert, get = google.requests
    assert insert.method == "POST"
    assert (get.method, get.path) == (
        "GET",
        f"/calendar/v3/calendars/team@example.org/events/{gw._event_id('exec-1')}",
    )


# -- drive ----------------------------------------------------------------------------------

DRIVE = {"service": "drive", "operation": "upload", "name": "report.txt"}
DRIVE_FILE = {"id": "file-1", "name": "report.txt", "webViewLink": "https://drive.google.com/f"}


def multipart(request: Request) -> tuple[dict[str, Any], Message]:
    """The metadata and the media part of a multipart upload."""
    content_type = request.headers["content-type"]
    parsed = email.message_from_bytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + request.body
    )
    metadata, media = parts(parsed)
    return json.loads(text(metadata)), media


def test_drive_upload_sends_text_content_multipart(google: Google) -> None:
    google.answer(body=DRIVE_FILE)
    output = run({**DRIVE, "content": "line one\nline two", "folderId": "folder-9"})
    assert output == {
        "fileId": "file-1",
        "name": "report.txt",
        "webViewLink": "https://drive.google.com/f",
    }
    [request] = google.requests
    assert request.method == "POST"
    assert request.path == "/upload/drive/v3/files"
    assert request.query["uploadType"] == ["multipart"]
    assert request.query["supportsAllDrives"] == ["true"]
    metadata, media = multipart(request)
    assert metadata == {"name": "report.txt", "parents": ["folder-9"]}
    assert media.get_content_type() == "text/plain"
    assert media.get_payload(decode=True) == b"line one\nline two"


def test_drive_upload_reads_a_file_under_the_files_root(google: Google, tmp_path: Path) -> None:
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "week.csv").write_bytes(b"day,total\nmon,3\n")
    google.answer(body={"id": "file-2", "name": "week.csv"})
    output = run({**DRIVE, "name": "week.csv", "path": "exports/week.csv"}, files_root=tmp_path)
    assert output == {"fileId": "file-2", "name": "week.csv"}
    metadata, media = multipart(google.requests[0])
    assert metadata == {"name": "week.csv"}
    assert media.get_content_type() == "text/csv"
    assert media.get_payload(decode=True) == b"day,total\nmon,3\n"


def test_drive_uploads_a_large_file_resumably_in_chunks(google: Google, tmp_path: Path) -> None:
    data = bytes(range(256)) * (gw.RESUMABLE_ABOVE // 256 + 4096)
    (tmp_path / "big.bin").write_bytes(data)
    session = "https://www.googleapis.com/upload/drive/v3/files?uploadType=resumable&upload_id=u1"
    google.answer(body="", location=session)
    google.answer(308, "", range=f"bytes=0-{gw.RESUMABLE_ABOVE - 1}")
    google.answer(body={"id": "file-3", "name": "big.bin"})
    output = run({**DRIVE, "name": "big.bin", "path": "big.bin"}, files_root=tmp_path)
    assert output == {"fileId": "file-3", "name": "big.bin"}
    start, first, second = google.requests
    assert start.query["uploadType"] == ["resumable"]
    assert start.json() == {"name": "big.bin"}
    assert start.headers["X-Upload-Content-Type"] == "application/octet-stream"
    assert (first.method, first.uri, second.uri) == ("PUT", session, session)
    assert first.body + second.body == data


def test_drive_content_defaults_to_the_previous_result_as_json(google: Google) -> None:
    google.answer(body=DRIVE_FILE)
    run(DRIVE, previous_result={"rows": [1, 2]})
    _, media = multipart(google.requests[0])
    assert media.get_content_type() == "application/json"
    assert json.loads(text(media)) == {"rows": [1, 2]}


def test_drive_refuses_a_symlink_out_of_the_files_root(google: Google, tmp_path: Path) -> None:
    root = tmp_path / "owner"
    root.mkdir()
    (tmp_path / "secret.txt").write_text("not yours")
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(PermanentError, match="outside your files directory"):
        run({**DRIVE, "path": "link.txt"}, files_root=root)
    assert google.http is None or not google.http.request_sequence


@pytest.mark.parametrize("path", ["../secret.txt", "/etc/passwd", "a/../../b", "..\\x"])
def test_drive_path_escapes_are_config_errors(path: str) -> None:
    assert "path" in config_errors({**DRIVE, "path": path})


def test_drive_missing_file_and_missing_root_are_permanent(google: Google, tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="not a file"):
        run({**DRIVE, "path": "nope.txt"}, files_root=tmp_path)
    with pytest.raises(PermanentError, match="no files directory"):
        run({**DRIVE, "path": "nope.txt"})


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason", "error"),
    [
        (429, "rateLimitExceeded", RetryableError),
        (500, "backendError", RetryableError),
        (503, "backendError", RetryableError),
        (403, "userRateLimitExceeded", RetryableError),
        (403, "forbidden", PermanentError),
        (404, "notFound", PermanentError),
        (400, "invalidArgument", PermanentError),
    ],
)
def test_google_answers_map_to_retryable_or_permanent(
    google: Google, status: int, reason: str, error: type[Exception]
) -> None:
    google.error(status, f"Google says {reason}", reason=reason)
    with pytest.raises(error) as caught:
        run({**GMAIL, "body": "x"})
    assert type(caught.value) is error
    assert str(caught.value) == f"gmail answered HTTP {status}: Google says {reason}"


def test_401_with_no_way_to_refresh_is_permanent(google: Google) -> None:
    google.error(401, "Request had invalid authentication credentials.", reason="authError")
    with pytest.raises(PermanentError, match="Google refused the stored credentials"):
        run({**GMAIL, "body": "x"})


def test_long_google_messages_are_shortened(google: Google) -> None:
    google.error(400, "bad " * 500, reason="badRequest")
    with pytest.raises(PermanentError) as caught:
        run({**GMAIL, "body": "x"})
    assert len(str(caught.value)) < gw.MAX_MESSAGE_CHARS + 40


@pytest.mark.parametrize(
    "exc",
    [
        TimeoutError("timed out"),
        ConnectionRefusedError(111, "refused"),
        httplib2.ServerNotFoundError("Unable to find the server at gmail.googleapis.com"),
    ],
)
def test_transport_errors_are_retryable(google: Google, exc: BaseException) -> None:
    google.fail(exc)
    with pytest.raises(RetryableError, match="could not reach Google"):
        run({**GMAIL, "body": "x"})


@pytest.mark.parametrize("credentials", [None, {}])
def test_no_stored_credentials_is_permanent(google: Google, credentials: Any) -> None:
    with pytest.raises(PermanentError) as caught:
        run({**GMAIL, "body": "x"}, credentials=credentials)
    assert str(caught.value) == (
        "no Google credentials stored for this user; PUT them at /api/integrations/google"
    )
    assert google.http is None


SHEETS = {"service": "sheets", "operation": "append", "spreadsheetId": "x", "range": "A1"}


# -- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "path"),
    [
        ({"service": "gmail", "operation": "send", "subject": "s"}, "to"),
        ({**GMAIL, "to": ["not an address"]}, "to"),
        ({**GMAIL, "subject": "two\nlines"}, "subject"),
        ({**GMAIL, "operation": "read"}, "operation"),
        ({**GMAIL, "unknown": 1}, "unknown"),
        ({"operation": "send"}, "service"),
        ({"service": "docs", "operation": "create"}, "service"),
        ({**SHEETS, "spreadsheetId": "a/b"}, "spreadsheetId"),
        ({**SHEETS, "values": []}, "values"),
        ({**SHEETS, "values": [[1, {"a": 1}]]}, "values[0][1]"),
        ({**EVENT, "end": "2025-03-10T08:00:00+01:00"}, "end"),
        ({**EVENT, "start": "2025-03-10T09:00:00"}, "start"),
        ({**EVENT, "timezone": "Mars/Olympus"}, "timezone"),
        ({**EVENT, "attendees": ["x"]}, "attendees"),
        ({**DRIVE, "content": "a", "path": "b.txt"}, "path"),
        ({"service": "drive", "operation": "upload"}, "name"),
    ],
)
def test_config_errors_are_named_by_path(action: dict[str, Any], path: str) -> None:
    assert path in config_errors(action)


def test_calendar_defaults_and_openapi_schema() -> None:
    executor = gw.GoogleWorkspaceExecutor()
    config = executor.validate({"type": "google-workspace", **EVENT})
    assert isinstance(config, gw.CalendarCreateEventConfig)
    assert config.calendarId == "primary"
    schema = executor.Config.model_json_schema()
    assert schema["discriminator"]["propertyName"] == "service"
    assert set(schema["discriminator"]["mapping"]) == set(gw.SERVICES)


# -- credentials ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service_account_info() -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": "demo",
        "private_key_id": "key-1",
        "private_key": pem,
        "client_email": "robot@demo.iam.gserviceaccount.com",
        "client_id": "1234",
        "token_uri": "http://169.254.169.254/steal",
    }


def test_service_account_credentials_are_scoped_per_service(
    service_account_info: dict[str, Any],
) -> None:
    for service, scopes in gw.SCOPES.items():
        info = {**service_account_info, "subject": "ana@example.org"}
        creds = gw.build_credentials(info, service)
        assert isinstance(creds, service_account.Credentials)
        assert creds.scopes == scopes
        assert creds._subject == "ana@example.org"
        # The stored key never chooses where the signed assertion is posted.
        assert creds._token_uri == gw.GOOGLE_TOKEN_URI


def test_gmail_with_a_service_account_needs_a_subject(service_account_info: dict[str, Any]) -> None:
    with pytest.raises(PermanentError, match="subject"):
        gw.build_credentials(service_account_info, "gmail")
    creds = gw.build_credentials(service_account_info, "sheets")
    assert isinstance(creds, service_account.Credentials)
    assert creds.scopes == gw.SCOPES["sheets"]


def test_authorized_user_and_unusable_credentials() -> None:
    creds = gw.build_credentials({**USER_INFO, "token_uri": "http://evil.test/"}, "drive")
    assert isinstance(creds, user_credentials.Credentials)
    assert creds.refresh_token == USER_INFO["refresh_token"]
    assert creds.token_uri == gw.GOOGLE_TOKEN_URI
    with pytest.raises(PermanentError, match="must have type"):
        gw.build_credentials({"type": "external_account"}, "drive")


def test_incomplete_stored_credentials_are_permanent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gw, "http_factory", lambda timeout: RecordingHttp([]))
    with pytest.raises(PermanentError, match="not usable.*refresh_token"):
        run({**GMAIL, "body": "x"}, credentials={"type": "authorized_user", "client_id": "c"})


@pytest.fixture
def real_credentials(monkeypatch: pytest.MonkeyPatch) -> Iterator[Google]:
    """Only the transport is fake: the token refresh goes through it too."""
    fake = Google()

    def http_factory(timeout: float) -> RecordingHttp:
        fake.http = RecordingHttp(fake.answers)
        return fake.http

    monkeypatch.setattr(gw, "http_factory", http_factory)
    yield fake


def test_authorized_user_token_is_refreshed_then_used(real_credentials: Google) -> None:
    google = real_credentials
    google.answer(body={"access_token": "ya29.fresh", "expires_in": 3600, "token_type": "Bearer"})
    google.answer(body={"id": "msg-3", "threadId": "thr-3"})
    logs: list[str] = []
    assert run({**GMAIL, "body": "x"}, logs=logs) == {"messageId": "msg-3", "threadId": "thr-3"}
    refresh, send = google.requests
    assert (refresh.method, refresh.uri) == ("POST", gw.GOOGLE_TOKEN_URI)
    assert parse_qs(refresh.body.decode())["refresh_token"] == [USER_INFO["refresh_token"]]
    assert send.headers["authorization"] == "Bearer ya29.fresh"
    for line in logs:
        assert USER_INFO["refresh_token"] not in line
        assert USER_INFO["client_secret"] not in line
        assert "ya29" not in line


def test_revoked_refresh_token_is_permanent_and_keeps_secrets_out(real_credentials: Google) -> None:
    real_credentials.answer(
        400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
    )
    with pytest.raises(PermanentError, match="invalid_grant") as caught:
        run({**GMAIL, "body": "x"})
    assert USER_INFO["refresh_token"] not in str(caught.value)
    assert USER_INFO["client_secret"] not in str(caught.value)
    assert len(real_credentials.requests) == 1


def test_token_endpoint_outage_is_retryable(
    real_credentials: Google, monkeypatch: pytest.MonkeyPatch
) -> None:
    # google-auth tries the token endpoint three times with backoff; skip the waiting.
    monkeypatch.setattr(_exponential_backoff, "time", SimpleNamespace(sleep=lambda _: None))
    real_credentials.answer(503, {"error": "internal_failure"})
    real_credentials.answer(503, {"error": "internal_failure"})
    real_credentials.answer(503, {"error": "internal_failure"})
    with pytest.raises(RetryableError, match="Google refused the stored credentials"):
        run({**GMAIL, "body": "x"})
