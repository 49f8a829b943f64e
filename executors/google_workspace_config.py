"""The config shapes of google-workspace actions: one model per service, joined by a
discriminator on ``service`` (validated as that union; :class:`GoogleWorkspaceConfig`
gives the union's JSON schema)."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AwareDatetime,
    Field,
    TypeAdapter,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
)
from pydantic.json_schema import DEFAULT_REF_TEMPLATE, GenerateJsonSchema, JsonSchemaMode

from .base import ActionConfig
from .fields import email_addresses, single_line

SERVICES = ("gmail", "sheets", "calendar", "drive")
MAX_RECIPIENTS = 50


class _GoogleAction(ActionConfig):
    type: Literal["google-workspace"]


class GmailSendConfig(_GoogleAction):
    service: Literal["gmail"]
    operation: Literal["send"]
    to: list[str] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    cc: list[str] = Field(default_factory=list, max_length=MAX_RECIPIENTS)
    bcc: list[str] = Field(default_factory=list, max_length=MAX_RECIPIENTS)
    subject: str = Field(min_length=1, max_length=998)
    #: Plain-text body; omitted in a chain step, the previous step's result is sent.
    body: str | None = Field(default=None, max_length=1_000_000)
    html: str | None = Field(default=None, max_length=2_000_000)

    _valid_addresses = field_validator("to", "cc", "bcc", mode="before")(email_addresses)
    _one_line = field_validator("subject")(single_line)


def _scalar(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    if value is not None and not isinstance(value, str | int | float | bool):
        raise ValueError("must be a string, number, boolean or null")
    return handler(value)


#: One cell; checked as a whole so that errors name the cell, not a union member.
Cell = Annotated[str | int | float | bool | None, WrapValidator(_scalar)]


class SheetsAppendConfig(_GoogleAction):
    service: Literal["sheets"]
    operation: Literal["append"]
    spreadsheetId: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_-]+$")
    range: str = Field(min_length=1, max_length=500)
    values: list[list[Cell]] = Field(min_length=1, max_length=10_000)


class CalendarCreateEventConfig(_GoogleAction):
    service: Literal["calendar"]
    operation: Literal["createEvent"]
    calendarId: str = Field(default="primary", min_length=1, max_length=300)
    summary: str = Field(min_length=1, max_length=1024)
    description: str | None = Field(default=None, max_length=8192)
    start: AwareDatetime
    end: AwareDatetime
    timezone: str | None = Field(default=None, max_length=100)
    attendees: list[str] = Field(default_factory=list, max_length=MAX_RECIPIENTS)

    _valid_attendees = field_validator("attendees", mode="before")(email_addresses)

    @field_validator("end")
    @classmethod
    def _after_start(cls, value: AwareDatetime, info: ValidationInfo) -> AwareDatetime:
        start = info.data.get("start")
        if start is not None and value <= start:
            raise ValueError("must be after start")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"{value!r} is not an IANA time zone") from None
        return value


class DriveUploadConfig(_GoogleAction):
    service: Literal["drive"]
    operation: Literal["upload"]
    name: str = Field(min_length=1, max_length=1000)
    #: Text to store; with neither content nor path, the previous step's result is stored.
    content: str | None = Field(default=None, max_length=5_000_000)
    #: A file under the owner's files directory (relative; never outside it).
    path: str | None = Field(default=None, min_length=1, max_length=1000)
    mimeType: str | None = Field(default=None, max_length=255, pattern=r"^[\w.+-]+/[\w.+-]+$")
    folderId: str | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if info.data.get("content") is not None:
            raise ValueError("give either content or path, not both")
        parts = PurePosixPath(value.replace("\\", "/"))
        if parts.is_absolute() or ".." in parts.parts or "\x00" in value:
            raise ValueError("must be a path relative to your files directory, without '..'")
        return value


GoogleWorkspaceAction = Annotated[
    GmailSendConfig | SheetsAppendConfig | CalendarCreateEventConfig | DriveUploadConfig,
    Field(discriminator="service"),
]
ACTION = TypeAdapter(GoogleWorkspaceAction)


class GoogleWorkspaceConfig(_GoogleAction):
    """What every google-workspace action shares; its JSON schema is the full union (one
    shape per service), and validation goes through the executor's ``validate``."""

    service: Literal["gmail", "sheets", "calendar", "drive"]
    operation: str

    @classmethod
    def model_json_schema(
        cls,
        by_alias: bool | None = None,
        ref_template: str = DEFAULT_REF_TEMPLATE,
        schema_generator: type[GenerateJsonSchema] = GenerateJsonSchema,
        mode: JsonSchemaMode = "validation",
        *,
        union_format: Literal["any_of", "primitive_type_array"] = "any_of",
    ) -> dict[str, Any]:
        return ACTION.json_schema(
            by_alias=by_alias,
            ref_template=ref_template,
            schema_generator=schema_generator,
            mode=mode,
            union_format=union_format,
        )
