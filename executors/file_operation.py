"""file-operation: backup, copy, move, delete, list, read, write and mkdir inside the
owner's own directory (``ctx.files_root``) and nowhere else.

Every path is read relative to that root, even one that starts with ``/``. A path is
walked one component at a time from an open descriptor of the root, each directory
opened with ``O_NOFOLLOW`` relative to its parent; a symbolic link met on the way is
resolved by hand and followed only while its target stays inside the root. Whatever is
finally opened, created or removed is addressed by name relative to an open parent
descriptor, so a component swapped for a link after the check cannot lead outside.
Backups and copies never dereference links (they are skipped), delete removes a link
itself, and write refuses to write through one. Results and errors show paths relative
to the root (``/data/x``), never the server's own path.
"""

from __future__ import annotations

import codecs
import errno
import fnmatch
import hashlib
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Literal

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from .base import ActionConfig, ActionResult, ExecutionContext, Executor
from .errors import PermanentError, RetryableError

Operation = Literal["backup", "copy", "move", "delete", "list", "read", "write", "mkdir"]

#: Settings read (with these defaults) when an operation runs.
DEFAULT_LIMITS = {
    "SCHEDULER_FILES_MAX_READ_BYTES": 1024 * 1024,
    "SCHEDULER_FILES_MAX_WRITE_BYTES": 10 * 1024 * 1024,
    "SCHEDULER_FILES_MAX_ARCHIVE_BYTES": 1024 * 1024 * 1024,
    "SCHEDULER_FILES_MAX_ENTRIES": 10_000,
}
BACKUPS_DIR = "backups"
LIST_LIMIT = 1000
MAX_DEPTH = 64
MAX_LINK_HOPS = 40
MAX_PATH_CHARS = 1024
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted in the root must not hang the worker.
FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
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


# --- paths -----------------------------------------------------------------------------


def split_path(text: str) -> list[str]:
    """'/data/./x/../y' -> ['data', 'y']: relative to the files root, even with a leading
    '/'. Raises ValueError on a NUL byte or a '..' that climbs above the root."""
    if "\0" in text:
        raise ValueError("must not contain NUL bytes")
    return _normalise(text.split("/"))


def _normalise(components: Sequence[str]) -> list[str]:
    parts: list[str] = []
    for part in components:
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise ValueError("leads outside the files root")
            parts.pop()
        else:
            parts.append(part)
    return parts


def display(parts: Sequence[str]) -> str:
    """How a path is shown: relative to the files root, as '/data/x'."""
    return "/" + "/".join(parts)


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _kind(st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode):
        return "symlink"
    if stat.S_ISDIR(st.st_mode):
        return "directory"
    return "file" if stat.S_ISREG(st.st_mode) else "other"


@dataclass
class Location:
    """A path inside the root: an open descriptor of its (real) parent directory and its
    final name, None for the root itself. Close it (or use it in ``with``)."""

    dir_fd: int
    parent: tuple[str, ...]
    name: str | None

    @property
    def parts(self) -> tuple[str, ...]:
        return self.parent if self.name is None else (*self.parent, self.name)

    @property
    def shown(self) -> str:
        return display(self.parts)

    def lstat(self) -> os.stat_result | None:
        return os.fstat(self.dir_fd) if self.name is None else _lstat(self.name, self.dir_fd)

    def open_dir(self) -> int:
        if self.name is None:
            return os.dup(self.dir_fd)
        return os.open(self.name, DIR_FLAGS, dir_fd=self.dir_fd)

    def open_file(self, flags: int, mode: int = 0o644) -> int:
        assert self.name is not None
        return os.open(self.name, flags | FILE_FLAGS, mode, dir_fd=self.dir_fd)

    def inside(self, other: Location) -> bool:
        """Whether this path is ``other`` or lies under it."""
        return self.parts[: len(other.parts)] == other.parts

    def close(self) -> None:
        os.close(self.dir_fd)

    def __enter__(self) -> Location:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class FilesRoot:
    """The owner's directory, held open; every path is walked from this descriptor."""

    def __init__(self, root: Path) -> None:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.real = os.path.realpath(root)
        self.fd = os.open(self.real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def __enter__(self) -> FilesRoot:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def locate(
        self, parts: Sequence[str], *, follow: bool = True, create: bool = False
    ) -> Location:
        """Resolve ``parts`` inside the root. Links in the directories on the way are
        followed while they stay inside; the final component's link too if ``follow``.
        ``create`` makes missing directories on the way (not the final component)."""
        shown = display(parts)
        pending = list(parts)
        for _ in range(MAX_LINK_HOPS + 1):
            found = self._walk(pending, follow=follow, create=create, shown=shown)
            if isinstance(found, Location):
                return found
            pending = found
        raise PermanentError(f"{shown}: too many levels of symbolic links")

    def ensure_dir(self, parts: Sequence[str]) -> Location:
        """The directory at ``parts``, made if missing, as a Location of its own (name None)."""
        with self.locate(parts, create=True) as loc:
            st = loc.lstat()
            if st is None:
                assert loc.name is not None
                _mkdir(loc.name, loc.dir_fd)
            elif not stat.S_ISDIR(st.st_mode):
                raise PermanentError(f"{loc.shown} exists and is not a directory")
            return Location(loc.open_dir(), loc.parts, None)

    def _walk(
        self, pending: list[str], *, follow: bool, create: bool, shown: str
    ) -> Location | list[str]:
        """One pass from the root: a Location, or the new path when a link was met."""
        fd = os.dup(self.fd)
        done: list[str] = []
        try:
            for index, name in enumerate(pending):
                last = index == len(pending) - 1
                st = _lstat(name, fd)
                if st is not None and stat.S_ISLNK(st.st_mode) and (follow or not last):
                    target = os.readlink(name, dir_fd=fd)
                    return self._splice(done, target, pending[index + 1 :], shown)
                if last:
                    location, fd = Location(fd, tuple(done), name), -1
                    return location
                if st is None:
                    if not create:
                        raise NotFound(f"{display([*done, name])} does not exist")
                    _mkdir(name, fd)
                elif not stat.S_ISDIR(st.st_mode):
                    raise PermanentError(f"{display([*done, name])} is not a directory")
                try:
                    child = os.open(name, DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                        return list(pending)  # changed under us: walk again
                    raise
                os.close(fd)
                fd = child
                done.append(name)
            location, fd = Location(fd, (), None), -1
            return location
        finally:
            if fd >= 0:
                os.close(fd)

    def _splice(self, done: list[str], target: str, rest: list[str], shown: str) -> list[str]:
        """The path after replacing a link (found under ``done``) by its target."""
        escape = f"{shown} leads outside the files root through a symbolic link"
        try:
            if target.startswith("/"):
                absolute = _normalise(target.split("/"))
                root = _normalise(self.real.split("/"))
                if absolute[: len(root)] != root:
                    raise PermanentError(escape)
                return _normalise([*absolute[len(root) :], *rest])
            return _normalise([*done, *target.split("/"), *rest])
        except ValueError:
            raise PermanentError(escape) from None


class NotFound(PermanentError):
    """A directory on the way to a path does not exist."""


def _mkdir(name: str, dir_fd: int, mode: int = 0o755) -> bool:
    """Make a directory; False if something already had that name."""
    try:
        os.mkdir(name, mode, dir_fd=dir_fd)
    except FileExistsError:
        return False
    return True


@dataclass(frozen=True)
class Node:
    """An entry met by walk(); ``dir_fd`` is open only while the walk is at it."""

    dir_fd: int
    name: str
    rel: tuple[str, ...]
    st: os.stat_result


def walk(
    dir_fd: int,
    *,
    recursive: bool,
    skip: frozenset[tuple[int, int]] = frozenset(),
    rel: tuple[str, ...] = (),
    depth: int = 0,
) -> Iterator[Node]:
    """The entries under ``dir_fd`` in name order, a directory before its contents; never
    follows a link; entries whose (device, inode) is in ``skip`` are left out."""
    if depth > MAX_DEPTH:
        raise PermanentError(f"directories nest more than {MAX_DEPTH} levels deep")
    with os.scandir(dir_fd) as entries:
        names = sorted(entry.name for entry in entries)
    for name in names:
        st = _lstat(name, dir_fd)
        if st is None or (st.st_dev, st.st_ino) in skip:
            continue
        node = Node(dir_fd, name, (*rel, name), st)
        yield node
        if recursive and stat.S_ISDIR(st.st_mode):
            try:
                sub = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                    continue  # gone or swapped for a link since the listing
                raise
            try:
                yield from walk(sub, recursive=True, skip=skip, rel=node.rel, depth=depth + 1)
            finally:
                os.close(sub)


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


@dataclass
class Tally:
    """What a backup or copy went through, checked against the limits as it grows."""

    limits: Limits
    what: str
    files: int = 0
    directories: int = 0
    bytes: int = 0
    skipped: int = 0
    entries: int = field(default=0, repr=False)

    def entry(self) -> None:
        self.entries += 1
        if self.entries > self.limits.entries:
            raise PermanentError(
                f"{self.what} has more than {self.limits.entries} entries "
                "(SCHEDULER_FILES_MAX_ENTRIES)"
            )

    def add_file(self, size: int) -> None:
        self.files += 1
        self.bytes += size
        if self.bytes > self.limits.archive_bytes:
            raise PermanentError(
                f"{self.what} is larger than {self.limits.archive_bytes} bytes "
                "(SCHEDULER_FILES_MAX_ARCHIVE_BYTES)"
            )

    def summary(self) -> dict[str, int]:
        return {
            "files": self.files,
            "directories": self.directories,
            "bytes": self.bytes,
            "skipped": self.skipped,
        }


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


def parse_path(text: str, what: str) -> list[str]:
    """A path of the config as components, or a PermanentError (the config checks this
    too; a config that skipped validation must not get further)."""
    try:
        return split_path(text)
    except ValueError as exc:
        raise PermanentError(f"{what} {text!r} {exc}") from None


def _missing(shown: str) -> PermanentError:
    return PermanentError(f"{shown} does not exist")


def _existing(loc: Location, shown: str) -> os.stat_result:
    st = loc.lstat()
    if st is None:
        raise _missing(shown)
    return st


def do_read(job: Job) -> dict[str, Any]:
    encoding = job.config.encoding or "utf-8"
    with job.root.locate(job.parts) as loc:
        if loc.name is None or stat.S_ISDIR(_existing(loc, job.shown).st_mode):
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
    previous = job.ctx.previous_result
    if previous is None:
        raise PermanentError("nothing to write: set content, or run after a step with a result")
    if isinstance(previous, str):
        return previous
    return json.dumps(previous, ensure_ascii=False, indent=2, default=str)


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
            created = _mkdir(loc.name, loc.dir_fd)
            st = loc.lstat()
        if st is None or not stat.S_ISDIR(st.st_mode):
            raise PermanentError(f"{job.shown} exists and is not a directory")
    return {"path": job.shown, "created": created}


def do_delete(job: Job) -> dict[str, Any]:
    with job.root.locate(job.parts, follow=False) as loc:
        if loc.name is None:
            raise PermanentError("the files root itself cannot be deleted")
        kind = _kind(_existing(loc, job.shown))
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
        if not stat.S_ISDIR(_existing(loc, job.shown).st_mode):
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
    kind = _kind(st)
    return {
        "name": name,
        "type": kind,
        "size": st.st_size if kind == "file" else None,
        "modified": _iso(st.st_mtime),
    }


def _copy_file(
    src_fd: int, src_name: str, dst_fd: int, dst_name: str, tally: Tally, *, replace: bool
) -> None:
    """Copy one regular file between two open directories, by name, links never followed."""
    with os.fdopen(os.open(src_name, os.O_RDONLY | FILE_FLAGS, dir_fd=src_fd), "rb") as source:
        st = os.fstat(source.fileno())
        if not stat.S_ISREG(st.st_mode):
            tally.skipped += 1
            return
        tally.add_file(st.st_size)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL) | FILE_FLAGS
        mode = stat.S_IMODE(st.st_mode) | 0o600
        with os.fdopen(os.open(dst_name, flags, mode, dir_fd=dst_fd), "wb") as target:
            shutil.copyfileobj(source, target, 1024 * 1024)
            target.flush()
            os.utime(target.fileno(), ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_tree(src_fd: int, dst_fd: int, tally: Tally, depth: int = 0) -> None:
    """Copy a directory's contents; links and special files are skipped and counted."""
    for node in walk(src_fd, recursive=False, depth=depth):
        tally.entry()
        if stat.S_ISREG(node.st.st_mode):
            _copy_file(src_fd, node.name, dst_fd, node.name, tally, replace=False)
        elif stat.S_ISDIR(node.st.st_mode):
            tally.directories += 1
            os.mkdir(node.name, stat.S_IMODE(node.st.st_mode) | 0o700, dir_fd=dst_fd)
            sub_src = os.open(node.name, DIR_FLAGS, dir_fd=src_fd)
            try:
                sub_dst = os.open(node.name, DIR_FLAGS, dir_fd=dst_fd)
                try:
                    _copy_tree(sub_src, sub_dst, tally, depth + 1)
                finally:
                    os.close(sub_dst)
            finally:
                os.close(sub_src)
        else:
            tally.skipped += 1


def _target(job: Job, source: Location) -> Location:
    """Where a copy or move lands: the destination, or inside it if it is a directory."""
    assert job.config.destination is not None and source.name is not None
    parts = parse_path(job.config.destination, "destination")
    try:
        dest = job.root.locate(parts)
    except NotFound:
        # Refused before any missing directory is made (inside the source, say).
        if tuple(parts[: len(source.parts)]) == source.parts:
            raise PermanentError(
                f"cannot {job.config.operation} {source.shown} into itself"
            ) from None
        dest = job.root.locate(parts, create=True)
    st = dest.lstat()
    if st is None or not stat.S_ISDIR(st.st_mode):
        return dest
    try:
        return Location(dest.open_dir(), dest.parts, source.name)
    finally:
        dest.close()


def _check_target(job: Job, source: Location, target: Location, source_st: os.stat_result) -> bool:
    """Refuse a copy or move into itself or onto something; True if a file is replaced."""
    verb = job.config.operation
    if target.parts == source.parts:
        raise PermanentError(f"cannot {verb} {source.shown} onto itself")
    if target.inside(source):
        raise PermanentError(f"cannot {verb} {source.shown} into itself")
    target_st = target.lstat()
    if target_st is None:
        return False
    if stat.S_ISDIR(target_st.st_mode) or stat.S_ISDIR(source_st.st_mode):
        raise PermanentError(f"{target.shown} already exists")
    if not job.config.overwrite:
        raise PermanentError(f"{target.shown} already exists (set overwrite: true to replace it)")
    return True


def do_copy(job: Job) -> dict[str, Any]:
    with job.root.locate(job.parts) as source:
        if source.name is None:
            raise PermanentError("the files root itself cannot be copied")
        source_st = _existing(source, job.shown)
        with _target(job, source) as target:
            replace = _check_target(job, source, target, source_st)
            assert target.name is not None
            tally = Tally(job.limits, job.shown)
            if not stat.S_ISDIR(source_st.st_mode):
                if not stat.S_ISREG(source_st.st_mode):
                    raise PermanentError(f"{job.shown} is not a regular file")
                _copy_file(
                    source.dir_fd, source.name, target.dir_fd, target.name, tally, replace=replace
                )
                kind = "file"
            else:
                _copy_directory(source, target, tally)
                kind = "directory"
            destination = target.shown
    return {"path": job.shown, "destination": destination, "type": kind, **tally.summary()}


def _copy_directory(source: Location, target: Location, tally: Tally) -> None:
    assert target.name is not None
    os.mkdir(target.name, 0o700, dir_fd=target.dir_fd)
    try:
        src_fd = source.open_dir()
        try:
            dst_fd = target.open_dir()
            try:
                _copy_tree(src_fd, dst_fd, tally)
                os.fchmod(dst_fd, stat.S_IMODE(os.fstat(src_fd).st_mode) | 0o700)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)
    except BaseException:
        shutil.rmtree(target.name, dir_fd=target.dir_fd, ignore_errors=True)
        raise


def do_move(job: Job) -> dict[str, Any]:
    with job.root.locate(job.parts, follow=False) as source:
        if source.name is None:
            raise PermanentError("the files root itself cannot be moved")
        source_st = _existing(source, job.shown)
        with _target(job, source) as target:
            _check_target(job, source, target, source_st)
            assert target.name is not None
            os.rename(source.name, target.name, src_dir_fd=source.dir_fd, dst_dir_fd=target.dir_fd)
            destination = target.shown
    return {"path": job.shown, "destination": destination, "type": _kind(source_st)}


def _archive_name(stem: str, backups: Location) -> tuple[str, int]:
    """A new archive file in backups/, named after the source and the UTC time."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | FILE_FLAGS
    for n in range(1, 100):
        name = f"{stem}-{stamp}.tar.gz" if n == 1 else f"{stem}-{stamp}-{n}.tar.gz"
        try:
            return name, os.open(name, flags, 0o600, dir_fd=backups.dir_fd)
        except FileExistsError:
            continue
    raise RetryableError("too many backups of this path within one second")


def _add_file(tar: tarfile.TarFile, node: Node, arcname: str, tally: Tally) -> None:
    fd = os.open(node.name, os.O_RDONLY | FILE_FLAGS, dir_fd=node.dir_fd)
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (
            node.st.st_dev,
            node.st.st_ino,
        ):
            tally.skipped += 1  # replaced since the listing
            return
        tally.add_file(st.st_size)
        tar.addfile(_tarinfo(arcname, st, tarfile.REGTYPE), handle)


def _tarinfo(name: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
    """An entry without the server's user and group names."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = stat.S_IMODE(st.st_mode)
    info.mtime = int(st.st_mtime)
    info.size = st.st_size if kind == tarfile.REGTYPE else 0
    return info


def _fill_archive(
    tar: tarfile.TarFile, source: Location, top: str, skip: frozenset[tuple[int, int]], tally: Tally
) -> None:
    source_st = source.lstat()
    assert source_st is not None
    if not stat.S_ISDIR(source_st.st_mode):
        tally.entry()
        node = Node(source.dir_fd, top, (top,), source_st)
        _add_file(tar, node, top, tally)
        return
    dir_fd = source.open_dir()
    try:
        tar.addfile(_tarinfo(top, os.fstat(dir_fd), tarfile.DIRTYPE))
        for node in walk(dir_fd, recursive=True, skip=skip):
            tally.entry()
            arcname = "/".join((top, *node.rel))
            if stat.S_ISDIR(node.st.st_mode):
                tally.directories += 1
                tar.addfile(_tarinfo(arcname, node.st, tarfile.DIRTYPE))
            elif stat.S_ISREG(node.st.st_mode):
                _add_file(tar, node, arcname, tally)
            else:
                tally.skipped += 1  # links are never followed nor stored; nor are devices
    finally:
        os.close(dir_fd)


def do_backup(job: Job) -> dict[str, Any]:
    with job.root.locate(job.parts) as source:
        source_st = _existing(source, job.shown)
        if not (stat.S_ISDIR(source_st.st_mode) or stat.S_ISREG(source_st.st_mode)):
            raise PermanentError(f"{job.shown} is neither a file nor a directory")
        stem = source.name or "files"
        with job.root.ensure_dir([BACKUPS_DIR]) as backups:
            name, fd = _archive_name(stem, backups)
            tally = Tally(job.limits, job.shown)
            try:
                with os.fdopen(fd, "w+b") as raw:
                    # Older backups and this archive are not put in the archive.
                    skip = frozenset(
                        (st.st_dev, st.st_ino) for st in (os.fstat(backups.dir_fd), os.fstat(fd))
                    )
                    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
                        _fill_archive(tar, source, stem, skip, tally)
                    raw.flush()
                    size = os.fstat(raw.fileno()).st_size
                    raw.seek(0)
                    digest = hashlib.file_digest(raw, "sha256").hexdigest()
            except BaseException:
                os.unlink(name, dir_fd=backups.dir_fd)
                raise
            archive = display((*backups.parts, name))
    return {
        "path": job.shown,
        "archive": archive,
        "size": size,
        "sha256": digest,
        **tally.summary(),
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
