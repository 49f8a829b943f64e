"""copy, move and backup for file-operation: whole files and directory trees carried
inside the files root. Copies and backups never dereference links (they are skipped and
counted), and every file is opened by name relative to an open directory descriptor.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .confined_paths import (
    DIR_FLAGS,
    FILE_FLAGS,
    Location,
    Node,
    NotFound,
    display,
    existing,
    kind_of,
    parse_path,
    walk,
)
from .errors import PermanentError, RetryableError

if TYPE_CHECKING:
    from .file_operation import Job, Limits

BACKUPS_DIR = "backups"


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
        source_st = existing(source, job.shown)
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
        source_st = existing(source, job.shown)
        with _target(job, source) as target:
            _check_target(job, source, target, source_st)
            assert target.name is not None
            os.rename(source.name, target.name, src_dir_fd=source.dir_fd, dst_dir_fd=target.dir_fd)
            destination = target.shown
    return {"path": job.shown, "destination": destination, "type": kind_of(source_st)}


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
        source_st = existing(source, job.shown)
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
