"""file-operation: backup, copy, move, delete, list, read, write and mkdir inside the
owner's own directory (``ctx.files_root``) and nowhere else.

Paths are resolved by :mod:`executors.confined_paths` (relative to the root, links
followed only while they stay inside, every open relative to a held descriptor); copy,
move and backup are in :mod:`executors.file_trees`. Backups and copies never dereference
links (they are skipped), delete removes a link itself, and write refuses to write
through one. Results and errors show paths relative to the root (``/data/x``), never the
server's own path.
"""

from __future__ import annotations

import codecs
import errno
import fnmatch
import os
import shutil
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from .base import ActionConfig, ActionResult, ExecutionContext, Executor, chained_text
from .confined_paths import FILE_FLAGS as FILE_FLAGS  # re-exported (inbound e-mail uses it)
from .confined_paths import (
    FilesRoot,
    display,
    existing,
    kind_of,
    make_dir,
    parse_path,
    split_path,
    walk,
)
from .errors import PermanentError, RetryableError
from .file_trees import do_backup, do_copy, do_move

Operation = Literal["backup", "copy", "move", "delete", "list", "read", "write", "mkdir"]

#: Settings read (with these defaults) when an operation runs.
DEFAULT_LIMITS = {
    "SCHEDULER_FILES_MAX_READ_BYTES": 1024 * 1024,
    "SCHEDULER_FILES_MAX_WRITE_BYTES": 10 * 1024 * 1024,
    "SCHEDULER_FILES_MAX_ARCHIVE_BYTES": 1024 * 1024 * 1024,
    "SCHEDULER_FILES_MAX_ENTRIES": 10_000,
}
LIST_LIMIT = 1000
MAX_PATH_CHARS = 1024
RETRYABLE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EAGAIN, errno.EBUSY, errno.EINTR})

OPTIONAL_FIELDS = (
    *("path", "destination", "recursive", "pattern"),
    *("content", "mode", "encoding", "overwrite"),
)
REQUIRED: dict[str, frozenset[str]] = {
    "backup": frozenset({"path"}),
    "copy": frozenset({"path", "destination"}),
    "move": frozenset({"path", "destination"}),
    "delete": frozenset({"path"}),
    "list": frozenset(),
    "read": frozenset({"path"}),
    "write": frozenset({"path"}),
    "mkdir": frozenset({"path"}),
}
ALLOWED: dict[str, frozenset[str]] = {
    "backup": frozenset({"path"}),
    "copy": frozenset({"path", "destination", "overwrite"}),
    "move": frozenset({"path", "destination", "overwrite"}),
    "delete": frozenset({"path", "recursive"}),
    "list": frozenset({"path", "pattern", "recursive"}),
    "read": frozenset({"path", "encoding"}),
    "write": frozenset({"path", "content", "mode", "encoding"}),
    "mkdir": frozenset({"path"}),
}


# --- config ----------------------------------------------------------------------------


def _check_encoding(value: str) -> None:
    try:
        codecs.lookup(value)
    except LookupError:
        raise ValueError(f"{value!r} is not a known text encoding") from None


def _check_pattern(value: str) -> None:
    if "\0" in value:
        raise ValueError("must not contain NUL bytes")


def _check_path(value: str) -> None:
    split_path(value)


FIELD_CHECKS: dict[str, Callable[[Any], None]] = {
    "path": _check_path,
    "destination": _check_path,
    "pattern": _check_pattern,
    "encoding": _check_encoding,
}


class FileOperationConfig(ActionConfig):
    model_config = ConfigDict(validate_default=True)

    type: Literal["file-operation"]
    operation: Operation
    path: str | None = Field(default=None, min_length=1, max_length=MAX_PATH_CHARS)
    destination: str | None = Field(default=None, min_length=1, max_length=MAX_PATH_CHARS)
    recursive: bool | None = None
    pattern: str | None = Field(default=None, min_length=1, max_length=255)
    content: str | None = None
    mode: Literal["overwrite", "append"] | None = None
    encoding: str | None = Field(default=None, min_length=1, max_length=40)
    overwrite: bool | None = None

    @field_validator(*OPTIONAL_FIELDS)
    @classmethod
    def _for_operation(cls, value: Any, info: ValidationInfo) -> Any:
        operation = info.data.get("operation")
        name = info.field_name
        assert name is not None
        if operation is None:
            return value  # the operation itself is reported as wrong
        if value is None:
            if name in REQUIRED[operation]:
                raise ValueError(f"is required for the {operation} operation")
            return None
        if name not in ALLOWED[operation]:
            raise ValueError(f"is not used by the {operation} operation")
        if name in FIELD_CHECKS:
            FIELD_CHECKS[name](value)
        return value


# --- limits ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    read_bytes: int
    write_bytes: int
    archive_bytes: int
    entries: int

    @classmethod
    def from_settings(cls) -> Limits:
        values = dict(DEFAULT_LIMITS)
        try:
            for name, default in DEFAULT_LIMITS.items():
                values[name] = int(getattr(settings, name, default))
        except ImproperlyConfigured:  # used outside Django: the defaults
            pass
        return cls(
            read_bytes=values["SCHEDULER_FILES_MAX_READ_BYTES"],
            write_bytes=values["SCHEDULER_FILES_MAX_WRITE_BYTES"],
            archive_bytes=values["SCHEDULER_FILES_MAX_ARCHIVE_BYTES"],
            entries=values["SCHEDULER_FILES_MAX_ENTRIES"],
        )


# --- operations ------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    config: FileOperationConfig
    ctx: ExecutionContext
    root: FilesRoot
    limits: Limits
    parts: list[str]

    @property
    def shown(self) -> str:
        return display(self.parts)


def do_read(job: Job) -> dict[str, Any]:
    encoding = job.config.encoding or "utf-8"
    with job.root.locate(job.parts) as loc:
        if loc.name is None or stat.S_ISDIR(existing(loc, job.shown).st_mode):
            raise PermanentError(f"{job.shown} is a directory")
        with os.fdopen(loc.open_file(os.O_RDONLY), "rb") as handle:
            st = os.fstat(handle.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise PermanentError(f"{job.shown} is not a regular file")
            data = handle.read(job.limits.read_bytes + 1)
    truncated = len(data) > job.limits.read_bytes
    data = data[: job.limits.read_bytes]
    try:
        # Not final when cut: a character split by the cap is dropped, not an error.
        text = codecs.getincrementaldecoder(encoding)().decode(data, final=not truncated)
    except UnicodeDecodeError:
        raise PermanentError(f"{job.shown} is not {encoding} text") from None
    return {
        "path": job.shown,
        "encoding": encoding,
        "size": st.st_size,
        "truncated": truncated,
        "content": text,
    }


def _content(job: Job) -> str:
    if job.config.content is not None:
        return job.config.content
    text = chained_text(job.ctx)
    if text is None:
        raise PermanentError("nothing to write: set content, or run after a step with a result")
    return text


def do_write(job: Job) -> dict[str, Any]:
    encoding = job.config.encoding or "utf-8"
    mode = job.config.mode or "overwrite"
    try:
        data = _content(job).encode(encoding)
    except UnicodeEncodeError:
        raise PermanentError(f"the content cannot be written as {encoding}") from None
    if len(data) > job.limits.write_bytes:
        raise PermanentError(
            f"the content is larger than {job.limits.write_bytes} bytes "
            "(SCHEDULER_FILES_MAX_WRITE_BYTES)"
        )
    with job.root.locate(job.parts, follow=False, create=True) as loc:
        st = loc.lstat()
        if loc.name is None or (st is not None and stat.S_ISDIR(st.st_mode)):
            raise PermanentError(f"{job.shown} is a directory")
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise PermanentError(
                f"{job.shown} is a symbolic link; files are not written through one"
            )
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "append" else os.O_TRUNC)
        with os.fdopen(loc.open_file(flags), "wb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise PermanentError(f"{job.shown} is not a regular file")
            handle.write(data)
            handle.flush()
            size = os.fstat(handle.fileno()).st_size
    return {"path": job.shown, "mode": mode, "encoding": encoding, "bytes": len(data), "size": size}


def do_mkdir(job: Job) -> dict[str, Any]:
    with job.root.locate(job.parts, create=True) as loc:
        st = loc.lstat()
        created = False
        if st is None:
            assert loc.name is not None
            created = make_dir(loc.name, loc.dir_fd)
            st = loc.lstat()
        if st is None or not stat.S_ISDIR(st.st_mode):
            raise PermanentError(f"{job.shown} exists and is not a directory")
    return {"path": job.shown, "created": created}


def do_delete(job: Job) -> dict[str, Any]:
    with job.root.locate(job.parts, follow=False) as loc:
        if loc.name is None:
            raise PermanentError("the files root itself cannot be deleted")
        kind = kind_of(existing(loc, job.shown))
        if kind != "directory":
            os.unlink(loc.name, dir_fd=loc.dir_fd)  # a link goes, never what it points to
        elif job.config.recursive:
            # rmtree with dir_fd works on descriptors and does not follow links.
            shutil.rmtree(loc.name, dir_fd=loc.dir_fd)
        else:
            try:
                os.rmdir(loc.name, dir_fd=loc.dir_fd)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                raise PermanentError(
                    f"{job.shown} is a directory that is not empty; "
                    "set recursive: true to delete it with its contents"
                ) from None
    return {"path": job.shown, "type": kind, "deleted": True}


def _iso(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")


def do_list(job: Job) -> dict[str, Any]:
    pattern = job.config.pattern
    entries: list[dict[str, Any]] = []
    truncated = False
    with job.root.locate(job.parts) as loc:
        if not stat.S_ISDIR(existing(loc, job.shown).st_mode):
            raise PermanentError(f"{job.shown} is not a directory")
        dir_fd = loc.open_dir()
    try:
        for seen, node in enumerate(walk(dir_fd, recursive=bool(job.config.recursive)), 1):
            name = "/".join(node.rel)
            if seen > job.limits.entries or len(entries) >= LIST_LIMIT:
                truncated = True
                break
            if pattern is None or fnmatch.fnmatchcase(name, pattern):
                entries.append(_entry(name, node.st))
    finally:
        os.close(dir_fd)
    return {"path": job.shown, "count": len(entries), "truncated": truncated, "entries": entries}


def _entry(name: str, st: os.stat_result) -> dict[str, Any]:
    kind = kind_of(st)
    return {
        "name": name,
        "type": kind,
        "size": st.st_size if kind == "file" else None,
        "modified": _iso(st.st_mtime),
    }


OPERATIONS: dict[str, Callable[[Job], dict[str, Any]]] = {
    "backup": do_backup,
    "copy": do_copy,
    "move": do_move,
    "delete": do_delete,
    "list": do_list,
    "read": do_read,
    "write": do_write,
    "mkdir": do_mkdir,
}


def _os_error(exc: OSError, operation: str, shown: str) -> Exception:
    """An OSError as an executor error: its reason only (its file name could be a server path)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.ELOOP:
        reason = "a symbolic link is in the way"
    message = f"{operation} {shown} failed: {reason}"
    if exc.errno in RETRYABLE_ERRNOS:
        return RetryableError(message)
    return PermanentError(message)


class FileOperationExecutor(Executor[FileOperationConfig]):
    action_type: ClassVar[str] = "file-operation"
    Config = FileOperationConfig

    def execute(self, config: FileOperationConfig, ctx: ExecutionContext) -> ActionResult:
        if ctx.files_root is None:
            raise PermanentError("no files root")
        parts = parse_path(config.path or "/", "path")
        shown = display(parts)
        ctx.log(f"{config.operation} {shown}")
        try:
            with FilesRoot(ctx.files_root) as root:
                job = Job(config, ctx, root, Limits.from_settings(), parts)
                output = OPERATIONS[config.operation](job)
        except OSError as exc:
            raise _os_error(exc, config.operation, shown) from None
        except tarfile.TarError as exc:
            raise PermanentError(f"{config.operation} {shown} failed: {exc}") from None
        ctx.log(f"{config.operation} {shown}: done")
        return ActionResult(output={"operation": config.operation, **output})
