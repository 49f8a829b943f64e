"""google-workspace: one call to a Google Workspace API on the owner's behalf.

One operation per service: ``gmail`` ``send``, ``sheets`` ``append``, ``calendar``
``createEvent`` and ``drive`` ``upload``, through google-api-python-client with its bundled
(static) discovery documents, so building a client needs no network.

Credentials come from ``ctx.host.google_credentials()``: a service-account key (optionally
with ``"subject"`` for domain-wide delegation) or an authorized-user token. The client
library's own retries are off: Celery owns retries (429, 5xx, rate-limit 403s and transport
errors are retryable; other 4xx are not).

Seams for tests: :data:`credentials_factory` turns the stored dict into google-auth
credentials, :data:`http_factory` makes the raw ``httplib2.Http`` that the executor wraps in
``google_auth_httplib2.AuthorizedHttp``; replace them (e.g. with an ``HttpMockSequence``) to
see the requests the library would send. The config shapes are in
:mod:`executors.google_workspace_config`.
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import google.auth.exceptions
from googleapiclient.errors import HttpError
from pydantic import ValidationError

from .base import ActionResult, ExecutionContext, Executor, chained_text, error_path
from .errors import ConfigError, PermanentError, RetryableError

if TYPE_CHECKING:  # the client libraries are imported when used (~25 MB per process)
    import httplib2
    from google.auth.credentials import Credentials
from .google_workspace_config import (
    ACTION,
    SERVICES,
    CalendarCreateEventConfig,
    DriveUploadConfig,
    GmailSendConfig,
    GoogleWorkspaceAction,
    GoogleWorkspaceConfig,
    SheetsAppendConfig,
)

#: (API name, version) of each service's client.
APIS: dict[str, tuple[str, str]] = {
    "gmail": ("gmail", "v1"),
    "sheets": ("sheets", "v4"),
    "calendar": ("calendar", "v3"),
    "drive": ("drive", "v3"),
}
#: The narrowest scope that lets each operation work (asked for service-account tokens).
SCOPES: dict[str, list[str]] = {
    "gmail": ["https://www.googleapis.com/auth/gmail.send"],
    "sheets": ["https://www.googleapis.com/auth/spreadsheets"],
    "calendar": ["https://www.googleapis.com/auth/calendar.events"],
    # drive.file cannot add to a folder the app did not create; folderId needs drive.
    "drive": ["https://www.googleapis.com/auth/drive"],
}
#: Stored keys never choose where the worker posts them.
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
NO_CREDENTIALS = "no Google credentials stored for this user; PUT them at /api/integrations/google"
MAX_UPLOAD_BYTES = 100 * 1024 * 1024
#: Larger uploads go resumable, in chunks of this size.
RESUMABLE_ABOVE = 5 * 1024 * 1024
#: 403 reasons Google uses for "slow down" rather than "not allowed".
RETRYABLE_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded", "backendError"})
MAX_MESSAGE_CHARS = 300


# -- seams ---------------------------------------------------------------------------------


def build_credentials(info: Mapping[str, Any], service: str) -> Credentials:
    """google-auth credentials from the stored dict, scoped for ``service``."""
    from google.oauth2 import credentials as user_credentials
    from google.oauth2 import service_account

    kind = info.get("type")
    if kind == "service_account":
        key = {**info, "token_uri": GOOGLE_TOKEN_URI, "universe_domain": "googleapis.com"}
        subject = info.get("subject") or None
        if service == "gmail" and not subject:
            raise PermanentError(
                "Gmail with a service account needs 'subject' (the mailbox to send as, "
                "through domain-wide delegation) in the stored credentials"
            )
        return service_account.Credentials.from_service_account_info(
            key, scopes=SCOPES[service], subject=subject
        )
    if kind == "authorized_user":
        # The refresh token carries the scopes the user consented to; asking for others
        # would only fail the refresh. The token endpoint is always Google's.
        return user_credentials.Credentials.from_authorized_user_info(dict(info))
    raise PermanentError(
        "the stored Google credentials must have type 'service_account' or 'authorized_user'"
    )


def build_http(timeout: float) -> httplib2.Http:
    """The raw transport; the executor adds authorization on top of it."""
    import httplib2

    return httplib2.Http(timeout=timeout)


credentials_factory: Callable[[Mapping[str, Any], str], Credentials] = build_credentials
http_factory: Callable[[float], Any] = build_http


# -- the executor ----------------------------------------------------------------------------


class GoogleWorkspaceExecutor(Executor[GoogleWorkspaceAction]):
    action_type: ClassVar[str] = "google-workspace"
    Config = GoogleWorkspaceConfig

    def validate(self, raw: Mapping[str, Any]) -> GoogleWorkspaceAction:
        try:
            return ACTION.validate_python(dict(raw))
        except ValidationError as exc:
            raise ConfigError([_config_error(err) for err in exc.errors()]) from None

    def execute(self, config: GoogleWorkspaceAction, ctx: ExecutionContext) -> ActionResult:
        info = ctx.host.google_credentials() if ctx.host is not None else None
        if not info:
            raise PermanentError(NO_CREDENTIALS)
        credentials = _credentials(info, config.service)
        ctx.log(f"{config.service} {config.operation} as {_kind(info)}")
        with _google_errors(config.service):
            client = _client(config.service, credentials, ctx.egress.timeout)
            output = OPERATIONS[config.service](client, config, ctx)
        ctx.log(f"done: {_summary(output)}")
        return ActionResult(output=output)


def _config_error(err: Any) -> tuple[str, str]:
    if err["type"] in {"union_tag_invalid", "union_tag_not_found"}:
        return "service", f"must be one of {', '.join(SERVICES)}"
    # The first location is the union's tag (the service); the rest is the field.
    return error_path(tuple(err["loc"][1:])), err["msg"]


def _kind(info: Mapping[str, Any]) -> str:
    if info.get("type") == "service_account":
        return "a service account" + (" (delegated)" if info.get("subject") else "")
    return "an authorized user"


def _credentials(info: Mapping[str, Any], service: str) -> Credentials:
    try:
        return credentials_factory(info, service)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        # google-auth names missing fields; it never echoes key material.
        raise PermanentError(
            f"the stored Google credentials are not usable: {_short(str(exc))}"
        ) from None


def _client(service: str, credentials: Credentials, timeout: float) -> Any:
    import google_auth_httplib2
    from googleapiclient import discovery

    http = google_auth_httplib2.AuthorizedHttp(credentials, http=http_factory(timeout))
    name, version = APIS[service]
    return discovery.build(name, version, http=http, static_discovery=True, cache_discovery=False)


@contextmanager
def _google_errors(service: str) -> Iterator[None]:
    """Google's answers and transport failures as RetryableError / PermanentError."""
    import httplib2

    try:
        yield
    except HttpError as exc:
        raise _http_error(service, exc) from None
    except google.auth.exceptions.RefreshError as exc:
        text = (
            f"Google refused the stored credentials: {_short(str(exc.args[0]) if exc.args else '')}"
        )
        if getattr(exc, "retryable", False):
            raise RetryableError(text) from None
        raise PermanentError(text) from None
    except (google.auth.exceptions.TransportError, httplib2.HttpLib2Error, OSError) as exc:
        raise RetryableError(f"could not reach Google: {type(exc).__name__}: {exc}") from None


def _http_error(service: str, exc: HttpError) -> RetryableError | PermanentError:
    status = exc.status_code
    text = f"{service} answered HTTP {status}: {_short(str(exc.reason or ''))}"
    if status in (408, 429) or status >= 500 or _reasons(exc) & RETRYABLE_REASONS:
        return RetryableError(text)
    return PermanentError(text)


def _reasons(exc: HttpError) -> set[str]:
    details = exc.error_details if isinstance(exc.error_details, list) else []
    return {
        d["reason"] for d in details if isinstance(d, dict) and isinstance(d.get("reason"), str)
    }


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


def _summary(output: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in output.items() if k.endswith(("Id", "Range", "Rows")))


# -- operations ------------------------------------------------------------------------------


def gmail_send(client: Any, config: GmailSendConfig, ctx: ExecutionContext) -> dict[str, Any]:
    body = config.body if config.body is not None else chained_text(ctx)
    if body is None and config.html is None:
        raise PermanentError("no body: give body or html, or use this as a step after another")
    message = EmailMessage(policy=SMTP)
    message["To"] = ", ".join(config.to)
    if config.cc:
        message["Cc"] = ", ".join(config.cc)
    if config.bcc:  # Gmail delivers to Bcc and strips the header
        message["Bcc"] = ", ".join(config.bcc)
    message["Subject"] = config.subject
    if body is not None:
        message.set_content(body)
        if config.html is not None:
            message.add_alternative(config.html, subtype="html")
    else:
        message.set_content(config.html or "", subtype="html")
    raw = base64.urlsafe_b64encode(message.as_bytes()).decode("ascii")
    sent = client.users().messages().send(userId="me", body={"raw": raw}).execute()
    return {"messageId": sent.get("id"), "threadId": sent.get("threadId")}


def sheets_append(client: Any, config: SheetsAppendConfig, ctx: ExecutionContext) -> dict[str, Any]:
    answer = (
        client.spreadsheets()
        .values()
        .append(
            spreadsheetId=config.spreadsheetId,
            range=config.range,
            valueInputOption="USER_ENTERED",
            body={"values": config.values},
        )
        .execute()
    )
    updates = answer.get("updates", {})
    return {
        "spreadsheetId": answer.get("spreadsheetId", config.spreadsheetId),
        "updatedRange": updates.get("updatedRange"),
        "updatedRows": updates.get("updatedRows", 0),
    }


def calendar_create_event(
    client: Any, config: CalendarCreateEventConfig, ctx: ExecutionContext
) -> dict[str, Any]:
    # An id derived from the execution makes a retry after a lost answer find the event
    # it already created instead of adding a second one.
    event_id = _event_id(ctx.idempotency_key)
    event: dict[str, Any] = {
        "id": event_id,
        "summary": config.summary,
        "start": _when(config.start.isoformat(), config.timezone),
        "end": _when(config.end.isoformat(), config.timezone),
    }
    if config.description is not None:
        event["description"] = config.description
    if config.attendees:
        event["attendees"] = [{"email": address} for address in config.attendees]
    events = client.events()
    try:
        created = events.insert(calendarId=config.calendarId, body=event).execute()
    except HttpError as exc:
        if exc.status_code != 409:
            raise
        ctx.log("the event already exists (an earlier attempt created it)")
        created = events.get(calendarId=config.calendarId, eventId=event_id).execute()
    return {"eventId": created.get("id"), "htmlLink": created.get("htmlLink")}


def _event_id(key: str) -> str:
    """Calendar event ids are base32hex (a-v, 0-9), 5 to 1024 characters."""
    digest = hashlib.sha256(key.encode()).digest()
    return base64.b32hexencode(digest).decode("ascii").rstrip("=").lower()


def _when(moment: str, zone: str | None) -> dict[str, str]:
    return {"dateTime": moment, **({"timeZone": zone} if zone else {})}


def drive_upload(client: Any, config: DriveUploadConfig, ctx: ExecutionContext) -> dict[str, Any]:
    from googleapiclient.http import MediaInMemoryUpload, MediaIoBaseUpload

    metadata: dict[str, Any] = {"name": config.name}
    if config.folderId:
        metadata["parents"] = [config.folderId]
    if config.path is None:
        text, mime = _drive_text(config, ctx)
        media = MediaInMemoryUpload(text.encode("utf-8"), mimetype=mime, resumable=False)
        return _uploaded(_create(client, metadata, media), config)
    source = _confined(ctx.files_root, config.path)
    mime = config.mimeType or mimetypes.guess_type(source.name)[0] or "application/octet-stream"
    try:
        size = source.stat().st_size
        if size > MAX_UPLOAD_BYTES:
            raise PermanentError(f"{config.path} is larger than {MAX_UPLOAD_BYTES} bytes")
        stream = source.open("rb")
    except OSError as exc:
        raise PermanentError(f"cannot read {config.path}: {exc.strerror}") from None
    with stream:
        resumable = size > RESUMABLE_ABOVE
        media = MediaIoBaseUpload(stream, mime, chunksize=RESUMABLE_ABOVE, resumable=resumable)
        return _uploaded(_create(client, metadata, media), config)


def _uploaded(created: Mapping[str, Any], config: DriveUploadConfig) -> dict[str, Any]:
    result = {"fileId": created.get("id"), "name": created.get("name", config.name)}
    if created.get("webViewLink"):
        result["webViewLink"] = created["webViewLink"]
    return result


def _drive_text(config: DriveUploadConfig, ctx: ExecutionContext) -> tuple[str, str]:
    if config.content is not None:
        return config.content, config.mimeType or "text/plain"
    text = chained_text(ctx)
    if text is None:
        raise PermanentError(
            "no content: give content or path, or use this as a step after another"
        )
    default = "text/plain" if isinstance(ctx.previous_result, str) else "application/json"
    return text, config.mimeType or default


def _create(client: Any, metadata: dict[str, Any], media: Any) -> dict[str, Any]:
    request = client.files().create(
        body=metadata,
        media_body=media,
        fields="id,name,mimeType,webViewLink",
        supportsAllDrives=True,
    )
    return request.execute()


def _confined(root: Path | None, relative: str) -> Path:
    """``relative`` resolved under ``root``; symlinks and escapes are refused."""
    if root is None:
        raise PermanentError("this task's owner has no files directory")
    base = root.resolve()
    target = (base / relative.replace("\\", "/")).resolve()
    if not target.is_relative_to(base):
        raise PermanentError(f"{relative} is outside your files directory")
    if not target.is_file():
        raise PermanentError(f"{relative} is not a file in your files directory")
    return target


Operation = Callable[[Any, Any, ExecutionContext], dict[str, Any]]
OPERATIONS: dict[str, Operation] = {
    "gmail": gmail_send,
    "sheets": sheets_append,
    "calendar": calendar_create_event,
    "drive": drive_upload,
}
