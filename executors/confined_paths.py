"""Paths confined to one directory (an owner's files root), for file operations.

Every path is read relative to that root, even one that starts with ``/``. A path is
walked one component at a time from an open descriptor of the root, each directory
opened with ``O_NOFOLLOW`` relative to its parent; a symbolic link met on the way is
resolved by hand and followed only while its target stays inside the root. Whatever is
finally opened, created or removed is addressed by name relative to an open parent
descriptor, so a component swapped for a link after the check cannot lead outside.
Paths are shown relative to the root (``/data/x``), never as the server's own path.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from .errors import PermanentError

MAX_DEPTH = 64
MAX_LINK_HOPS = 40
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted in the root must not hang the worker.
FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


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


def parse_path(text: str, what: str) -> list[str]:
    """A path of the config as components, or a PermanentError (the config checks this
    too; a config that skipped validation must not get further)."""
    try:
        return split_path(text)
    except ValueError as exc:
        raise PermanentError(f"{what} {text!r} {exc}") from None


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def kind_of(st: os.stat_result) -> str:
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
                make_dir(loc.name, loc.dir_fd)
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
                    make_dir(name, fd)
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


def make_dir(name: str, dir_fd: int, mode: int = 0o755) -> bool:
    """Make a directory; False if something already had that name."""
    try:
        os.mkdir(name, mode, dir_fd=dir_fd)
    except FileExistsError:
        return False
    return True


def _missing(shown: str) -> PermanentError:
    return PermanentError(f"{shown} does not exist")


def existing(loc: Location, shown: str) -> os.stat_result:
    st = loc.lstat()
    if st is None:
        raise _missing(shown)
    return st


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
