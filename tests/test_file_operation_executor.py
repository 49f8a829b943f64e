"""executors.file_operation.FileOperationExecutor on a real temporary directory."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest

from executors.base import ActionResult, ExecutionContext
from executors.errors import ConfigError, PermanentError
from executors.file_operation import FileOperationConfig, FileOperationExecutor
from tests.executor_ctx import make_ctx

EXECUTOR = FileOperationExecutor()
STAMP = r"\d{8}T\d{6}Z"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "files" / "user-1"  # not made yet: the executor makes it


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the owner's root, with something worth stealing."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret.txt").write_text("top secret")
    return path


def context(root: Path | None, previous: Any = None) -> ExecutionContext:
    return make_ctx(files_root=root, previous_result=previous)[0]


def run(raw: dict[str, Any], root: Path | None, previous: Any = None) -> dict[str, Any]:
    config = EXECUTOR.validate({"type": "file-operation", **raw})
    result = EXECUTOR.execute(config, context(root, previous))
    assert isinstance(result, ActionResult)
    json.dumps(result.output)  # JSON-able
    return dict(result.output)


def fails(raw: dict[str, Any], root: Path, *, validate: bool = True) -> str:
    """The message of the PermanentError the operation fails with (never a server path)."""
    if validate:
        config = EXECUTOR.validate({"type": "file-operation", **raw})
    else:  # as if stored before a check existed: the executor must refuse on its own
        config = FileOperationConfig.model_construct(type="file-operation", **raw)
    with pytest.raises(PermanentError) as caught:
        EXECUTOR.execute(config, context(root))
    message = str(caught.value)
    assert str(root.parent.parent) not in message
    return message


def make(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


# --- config ----------------------------------------------------------------------------


def config_errors(raw: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        EXECUTOR.validate({"type": "file-operation", **raw})
    return caught.value.errors


def test_guide_example_is_valid() -> None:
    config = EXECUTOR.validate({"type": "file-operation", "operation": "backup", "path": "/data"})
    assert (config.operation, config.path) == ("backup", "/data")


def test_copy_needs_a_destination() -> None:
    assert config_errors({"operation": "copy", "path": "/a"}) == [
        ("destination", "Value error, is required for the copy operation")
    ]


def test_path_is_required_except_for_list() -> None:
    assert config_errors({"operation": "read"}) == [
        ("path", "Value error, is required for the read operation")
    ]
    assert EXECUTOR.validate({"type": "file-operation", "operation": "list"}).path is None


def test_fields_of_other_operations_are_refused() -> None:
    errors = config_errors(
        {"operation": "delete", "path": "/a", "content": "x", "mode": "append", "pattern": "*"}
    )
    assert errors == [
        ("pattern", "Value error, is not used by the delete operation"),
        ("content", "Value error, is not used by the delete operation"),
        ("mode", "Value error, is not used by the delete operation"),
    ]


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ({"operation": "read", "path": "../../etc/passwd"}, ("path", "leads outside")),
        ({"operation": "read", "path": "/a/../../b"}, ("path", "leads outside")),
        ({"operation": "read", "path": "a\0b"}, ("path", "NUL")),
        ({"operation": "copy", "path": "/a", "destination": "/../x"}, ("destination", "outside")),
        ({"operation": "read", "path": "/a", "encoding": "klingon"}, ("encoding", "not a known")),
        ({"operation": "write", "path": "/a", "mode": "prepend"}, ("mode", "'overwrite'")),
        ({"operation": "chmod", "path": "/a"}, ("operation", "'backup'")),
        ({"operation": "read", "path": "/a", "force": True}, ("force", "Extra inputs")),
    ],
)
def test_bad_fields_are_named(raw: dict[str, Any], error: tuple[str, str]) -> None:
    [(path, message)] = config_errors(raw)
    assert path == error[0] and error[1] in message


# --- write, read, mkdir ------------------------------------------------------------------


def test_no_files_root_is_a_permanent_error() -> None:
    with pytest.raises(PermanentError, match="^no files root$"):
        run({"operation": "list"}, None)


def test_write_makes_the_root_and_parents(root: Path) -> None:
    result = run({"operation": "write", "path": "/notes/today.txt", "content": "héllo"}, root)
    assert (root / "notes" / "today.txt").read_text() == "héllo"
    assert result == {
        "operation": "write",
        "path": "/notes/today.txt",
        "mode": "overwrite",
        "encoding": "utf-8",
        "bytes": 6,
        "size": 6,
    }


def test_write_overwrites_or_appends(root: Path) -> None:
    make(root, {"log.txt": "one\n"})
    run({"operation": "write", "path": "log.txt", "content": "two\n", "mode": "append"}, root)
    assert (root / "log.txt").read_text() == "one\ntwo\n"
    run({"operation": "write", "path": "log.txt", "content": "three\n"}, root)
    assert (root / "log.txt").read_text() == "three\n"


def test_write_takes_the_previous_result(root: Path) -> None:
    run({"operation": "write", "path": "a.txt"}, root, previous="plain text")
    assert (root / "a.txt").read_text() == "plain text"
    run({"operation": "write", "path": "b.json"}, root, previous={"text": "é", "n": [1]})
    assert json.loads((root / "b.json").read_text(encoding="utf-8")) == {"text": "é", "n": [1]}
    assert "nothing to write" in fails({"operation": "write", "path": "c.txt"}, root)


def test_write_in_another_encoding(root: Path) -> None:
    run({"operation": "write", "path": "l.txt", "content": "café", "encoding": "latin-1"}, root)
    assert (root / "l.txt").read_bytes() == b"caf\xe9"
    message = fails(
        {"operation": "write", "path": "a.txt", "content": "日本", "encoding": "ascii"}, root
    )
    assert message == "the content cannot be written as ascii"


def test_write_is_capped(root: Path, settings: Any) -> None:
    settings.SCHEDULER_FILES_MAX_WRITE_BYTES = 10
    message = fails({"operation": "write", "path": "a.txt", "content": "x" * 11}, root)
    assert "larger than 10 bytes" in message
    assert not (root / "a.txt").exists()


def test_write_onto_a_directory_is_refused(root: Path) -> None:
    (root / "dir").mkdir(parents=True)
    assert fails({"operation": "write", "path": "/dir", "content": "x"}, root) == (
        "/dir is a directory"
    )


def test_read(root: Path) -> None:
    make(root, {"data/report.txt": "line 1\nline 2 ✓\n"})
    assert run({"operation": "read", "path": "/data/report.txt"}, root) == {
        "operation": "read",
        "path": "/data/report.txt",
        "encoding": "utf-8",
        "size": 18,
        "truncated": False,
        "content": "line 1\nline 2 ✓\n",
    }


def test_read_with_an_encoding(root: Path) -> None:
    root.mkdir(parents=True)
    (root / "l.txt").write_bytes(b"caf\xe9")
    assert run({"operation": "read", "path": "l.txt", "encoding": "latin-1"}, root)["content"] == (
        "café"
    )
    assert fails({"operation": "read", "path": "l.txt"}, root) == "/l.txt is not utf-8 text"


def test_read_is_capped_without_splitting_a_character(root: Path, settings: Any) -> None:
    settings.SCHEDULER_FILES_MAX_READ_BYTES = 5
    make(root, {"a.txt": "abcd✓efg"})  # ✓ is 3 bytes: the cap falls inside it
    result = run({"operation": "read", "path": "a.txt"}, root)
    assert (result["content"], result["truncated"], result["size"]) == ("abcd", True, 10)


def test_read_failures(root: Path) -> None:
    (root / "dir").mkdir(parents=True)
    assert fails({"operation": "read", "path": "/nope.txt"}, root) == "/nope.txt does not exist"
    assert fails({"operation": "read", "path": "/dir"}, root) == "/dir is a directory"
    assert fails({"operation": "read", "path": "/nope/x.txt"}, root) == "/nope does not exist"


def test_read_of_a_fifo_does_not_hang(root: Path) -> None:
    root.mkdir(parents=True)
    os.mkfifo(root / "pipe")
    assert fails({"operation": "read", "path": "pipe"}, root) == "/pipe is not a regular file"


def test_mkdir_with_parents(root: Path) -> None:
    result = run({"operation": "mkdir", "path": "/a/b/c"}, root)
    assert result == {"operation": "mkdir", "path": "/a/b/c", "created": True}
    assert (root / "a" / "b" / "c").is_dir()
    assert run({"operation": "mkdir", "path": "/a/b/c"}, root)["created"] is False
    make(root, {"f": "x"})
    assert fails({"operation": "mkdir", "path": "/f"}, root) == "/f exists and is not a directory"
    assert fails({"operation": "mkdir", "path": "/f/g"}, root) == "/f is not a directory"


# --- list --------------------------------------------------------------------------------


def test_list(root: Path) -> None:
    make(root, {"data/b.txt": "bb", "data/a.csv": "a", "data/sub/c.txt": "ccc"})
    os.utime(root / "data" / "b.txt", (0, 1_700_000_000))
    result = run({"operation": "list", "path": "/data"}, root)
    assert result["path"] == "/data"
    assert (result["count"], result["truncated"]) == (3, False)
    assert [(e["name"], e["type"], e["size"]) for e in result["entries"]] == [
        ("a.csv", "file", 1),
        ("b.txt", "file", 2),
        ("sub", "directory", None),
    ]
    assert result["entries"][1]["modified"] == "2023-11-14T22:13:20Z"
    for entry in result["entries"]:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry["modified"])


def test_list_with_pattern_and_recursion(root: Path) -> None:
    make(root, {"b.txt": "", "a.csv": "", "sub/c.txt": "", "sub/d.csv": ""})
    names = [e["name"] for e in run({"operation": "list", "pattern": "*.txt"}, root)["entries"]]
    assert names == ["b.txt"]
    deep = run({"operation": "list", "path": "/", "pattern": "*.txt", "recursive": True}, root)
    assert [e["name"] for e in deep["entries"]] == ["b.txt", "sub/c.txt"]


def test_list_is_capped(root: Path, settings: Any) -> None:
    settings.SCHEDULER_FILES_MAX_ENTRIES = 3
    make(root, {f"f{n}": "" for n in range(5)})
    result = run({"operation": "list"}, root)
    assert (result["count"], result["truncated"]) == (3, True)


def test_list_failures(root: Path) -> None:
    make(root, {"f.txt": ""})
    assert fails({"operation": "list", "path": "/f.txt"}, root) == "/f.txt is not a directory"
    assert fails({"operation": "list", "path": "/none"}, root) == "/none does not exist"


# --- copy, move, delete ------------------------------------------------------------------


def test_copy_a_file(root: Path) -> None:
    make(root, {"a.txt": "alpha"})
    os.chmod(root / "a.txt", 0o640)
    result = run({"operation": "copy", "path": "a.txt", "destination": "/backup/b.txt"}, root)
    assert (root / "backup" / "b.txt").read_text() == "alpha"
    assert (root / "a.txt").read_text() == "alpha"
    assert (root / "backup" / "b.txt").stat().st_mode & 0o777 == 0o640
    assert result == {
        "operation": "copy",
        "path": "/a.txt",
        "destination": "/backup/b.txt",
        "type": "file",
        "files": 1,
        "directories": 0,
        "bytes": 5,
        "skipped": 0,
    }


def test_copy_into_an_existing_directory_and_overwrite(root: Path) -> None:
    make(root, {"a.txt": "new", "dir/a.txt": "old"})
    message = fails({"operation": "copy", "path": "a.txt", "destination": "dir"}, root)
    assert message == "/dir/a.txt already exists (set overwrite: true to replace it)"
    result = run(
        {"operation": "copy", "path": "a.txt", "destination": "dir", "overwrite": True}, root
    )
    assert result["destination"] == "/dir/a.txt"
    assert (root / "dir" / "a.txt").read_text() == "new"


def test_copy_a_tree_skips_links(root: Path, outside: Path) -> None:
    make(root, {"src/a.txt": "a", "src/deep/b.txt": "bb"})
    (root / "src" / "escape").symlink_to(outside)
    (root / "src" / "inner").symlink_to("a.txt")
    result = run({"operation": "copy", "path": "/src", "destination": "/dst"}, root)
    assert (result["files"], result["directories"], result["skipped"]) == (2, 1, 2)
    assert (root / "dst" / "a.txt").read_text() == "a"
    assert (root / "dst" / "deep" / "b.txt").read_text() == "bb"
    assert sorted(p.name for p in (root / "dst").iterdir()) == ["a.txt", "deep"]


def test_copy_failures(root: Path) -> None:
    make(root, {"src/a.txt": "a", "f": "x"})
    assert fails({"operation": "copy", "path": "/nope", "destination": "/x"}, root) == (
        "/nope does not exist"
    )
    assert fails({"operation": "copy", "path": "/src", "destination": "/src/inner"}, root) == (
        "cannot copy /src into itself"
    )
    assert fails({"operation": "copy", "path": "/f", "destination": "/f"}, root) == (
        "cannot copy /f onto itself"
    )
    make(root, {"other/x": ""})
    assert fails({"operation": "copy", "path": "/src", "destination": "/other/x"}, root) == (
        "/other/x already exists"
    )


def test_copy_limits_leave_nothing_behind(root: Path, settings: Any) -> None:
    settings.SCHEDULER_FILES_MAX_ARCHIVE_BYTES = 10
    make(root, {"src/a": "x" * 6, "src/b": "y" * 6})
    message = fails({"operation": "copy", "path": "/src", "destination": "/dst"}, root)
    assert message == "/src is larger than 10 bytes (SCHEDULER_FILES_MAX_ARCHIVE_BYTES)"
    assert not (root / "dst").exists()


def test_move(root: Path) -> None:
    make(root, {"a.txt": "alpha", "dir/x": ""})
    result = run({"operation": "move", "path": "/a.txt", "destination": "/dir"}, root)
    assert result == {
        "operation": "move",
        "path": "/a.txt",
        "destination": "/dir/a.txt",
        "type": "file",
    }
    assert not (root / "a.txt").exists() and (root / "dir" / "a.txt").read_text() == "alpha"
    run({"operation": "move", "path": "/dir", "destination": "/renamed"}, root)
    assert sorted(p.name for p in (root / "renamed").iterdir()) == ["a.txt", "x"]
    assert fails({"operation": "move", "path": "/dir", "destination": "/y"}, root) == (
        "/dir does not exist"
    )
    assert fails({"operation": "move", "path": "/renamed", "destination": "/renamed/in"}, root) == (
        "cannot move /renamed into itself"
    )
    assert fails(
        {"operation": "move", "path": "/renamed", "destination": "/renamed/a/b"}, root
    ) == ("cannot move /renamed into itself")
    assert not (root / "renamed" / "a").exists()


def test_delete_files_and_directories(root: Path) -> None:
    make(root, {"a.txt": "", "full/b/c.txt": ""})
    (root / "empty").mkdir()
    assert run({"operation": "delete", "path": "/a.txt"}, root) == {
        "operation": "delete",
        "path": "/a.txt",
        "type": "file",
        "deleted": True,
    }
    assert run({"operation": "delete", "path": "/empty"}, root)["type"] == "directory"
    assert "set recursive: true" in fails({"operation": "delete", "path": "/full"}, root)
    assert (root / "full" / "b" / "c.txt").exists()
    run({"operation": "delete", "path": "/full", "recursive": True}, root)
    assert list(root.iterdir()) == []
    assert fails({"operation": "delete", "path": "/full"}, root) == "/full does not exist"


@pytest.mark.parametrize("path", ["/", ".", "data/..", "//"])
def test_the_root_itself_cannot_be_deleted(root: Path, path: str) -> None:
    make(root, {"data/keep.txt": "keep"})
    message = fails({"operation": "delete", "path": path, "recursive": True}, root)
    assert message == "the files root itself cannot be deleted"
    assert (root / "data" / "keep.txt").exists()


# --- backup ------------------------------------------------------------------------------


def test_backup(root: Path, tmp_path: Path) -> None:
    make(root, {"data/a.txt": "alpha", "data/sub/b.txt": "beta", "other.txt": "no"})
    result = run({"operation": "backup", "path": "/data"}, root)
    assert re.fullmatch(rf"/backups/data-{STAMP}\.tar\.gz", result["archive"])
    archive = root / result["archive"].lstrip("/")
    assert result["size"] == archive.stat().st_size
    assert result["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert (result["files"], result["directories"], result["bytes"]) == (2, 1, 9)
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["data", "data/a.txt", "data/sub", "data/sub/b.txt"]
        assert {m.uname for m in tar.getmembers()} == {""}
        tar.extractall(tmp_path / "restored", filter="data")
    assert (tmp_path / "restored" / "data" / "a.txt").read_text() == "alpha"
    assert (tmp_path / "restored" / "data" / "sub" / "b.txt").read_text() == "beta"


def test_backup_of_the_root_leaves_out_older_backups(root: Path) -> None:
    make(root, {"a.txt": "a"})
    first = run({"operation": "backup", "path": "/"}, root)
    second = run({"operation": "backup", "path": "/"}, root)
    assert first["archive"] != second["archive"]
    assert re.fullmatch(rf"/backups/files-{STAMP}(-2)?\.tar\.gz", second["archive"])
    with tarfile.open(root / second["archive"].lstrip("/")) as tar:
        assert tar.getnames() == ["files", "files/a.txt"]


def test_backup_of_a_single_file(root: Path) -> None:
    make(root, {"notes.txt": "n"})
    result = run({"operation": "backup", "path": "notes.txt"}, root)
    with tarfile.open(root / result["archive"].lstrip("/")) as tar:
        assert tar.getnames() == ["notes.txt"]


def test_backup_never_archives_links(root: Path, outside: Path) -> None:
    make(root, {"data/a.txt": "a"})
    (root / "data" / "etc").symlink_to("/etc")
    (root / "data" / "out").symlink_to(outside)
    (root / "data" / "secret").symlink_to(outside / "secret.txt")
    result = run({"operation": "backup", "path": "/data"}, root)
    assert (result["files"], result["skipped"]) == (1, 3)
    with tarfile.open(root / result["archive"].lstrip("/")) as tar:
        assert tar.getnames() == ["data", "data/a.txt"]
        assert b"top secret" not in b"".join(
            f.read() for m in tar.getmembers() if (f := tar.extractfile(m))
        )


def test_backup_limits_leave_no_archive(root: Path, settings: Any) -> None:
    settings.SCHEDULER_FILES_MAX_ENTRIES = 2
    make(root, {"data/a": "", "data/b": "", "data/c": ""})
    message = fails({"operation": "backup", "path": "/data"}, root)
    assert message == "/data has more than 2 entries (SCHEDULER_FILES_MAX_ENTRIES)"
    assert list((root / "backups").iterdir()) == []
    assert fails({"operation": "backup", "path": "/none"}, root) == "/none does not exist"


# --- confinement -------------------------------------------------------------------------


def test_traversal_is_refused_even_past_the_config_check(root: Path) -> None:
    raw = {"operation": "read", "path": "../../etc/passwd"}
    assert (
        fails(raw, root, validate=False) == "path '../../etc/passwd' leads outside the files root"
    )
    raw = {"operation": "read", "path": "a\0b"}
    assert fails(raw, root, validate=False) == "path 'a\\x00b' must not contain NUL bytes"
    raw = {"operation": "copy", "path": "/a", "destination": "../x"}
    make(root, {"a": ""})
    assert "leads outside the files root" in fails(raw, root, validate=False)


def test_an_absolute_path_is_read_inside_the_root(root: Path) -> None:
    root.mkdir(parents=True)
    assert fails({"operation": "read", "path": "/etc/passwd"}, root) == "/etc does not exist"
    make(root, {"etc/passwd": "mine"})
    assert run({"operation": "read", "path": "/etc/passwd"}, root)["content"] == "mine"


def test_a_link_to_etc_inside_the_root_is_not_followed(root: Path) -> None:
    root.mkdir(parents=True)
    (root / "etc").symlink_to("/etc")
    escape = "leads outside the files root through a symbolic link"
    for raw in (
        {"operation": "read", "path": "/etc/passwd"},
        {"operation": "list", "path": "/etc"},
        {"operation": "backup", "path": "/etc"},
        {"operation": "copy", "path": "/etc/hostname", "destination": "/stolen"},
        {"operation": "write", "path": "/etc/evil", "content": "x"},
        {"operation": "mkdir", "path": "/etc/evil"},
        {"operation": "delete", "path": "/etc/hostname"},
    ):
        assert escape in fails(raw, root), raw
    assert not (root / "stolen").exists()


def test_a_linked_directory_leading_outside(root: Path, outside: Path) -> None:
    root.mkdir(parents=True)
    (root / "out").symlink_to(outside)
    (root / "rel").symlink_to("../../outside")
    escape = "leads outside the files root through a symbolic link"
    assert escape in fails({"operation": "read", "path": "/out/secret.txt"}, root)
    assert escape in fails({"operation": "read", "path": "/rel/secret.txt"}, root)
    make(root, {"a": "payload"})
    assert escape in fails({"operation": "copy", "path": "/a", "destination": "/out/x"}, root)
    assert escape in fails({"operation": "move", "path": "/a", "destination": "/out/x"}, root)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def test_a_link_as_the_final_component(root: Path, outside: Path) -> None:
    root.mkdir(parents=True)
    (root / "secret").symlink_to(outside / "secret.txt")
    assert "outside the files root" in fails({"operation": "read", "path": "/secret"}, root)
    assert fails({"operation": "write", "path": "/secret", "content": "x"}, root) == (
        "/secret is a symbolic link; files are not written through one"
    )
    (root / "out").symlink_to(outside)
    run({"operation": "delete", "path": "/out", "recursive": True}, root)
    run({"operation": "delete", "path": "/secret"}, root)
    assert list(root.iterdir()) == []
    assert (outside / "secret.txt").read_text() == "top secret"


def test_links_that_stay_inside_are_followed(root: Path) -> None:
    make(root, {"real/data.txt": "inside"})
    (root / "rel").symlink_to("real")
    (root / "abs").symlink_to(root / "real")  # absolute, but inside the root
    (root / "real" / "up").symlink_to("../real/data.txt")
    assert run({"operation": "read", "path": "/rel/data.txt"}, root)["content"] == "inside"
    assert run({"operation": "read", "path": "/abs/data.txt"}, root)["content"] == "inside"
    assert run({"operation": "read", "path": "/abs/up"}, root)["content"] == "inside"
    listed = run({"operation": "list", "path": "/rel"}, root)["entries"]
    assert [(e["name"], e["type"]) for e in listed] == [("data.txt", "file"), ("up", "symlink")]


def test_a_link_loop_is_refused(root: Path) -> None:
    root.mkdir(parents=True)
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("a")
    assert "too many levels of symbolic links" in fails({"operation": "read", "path": "/a"}, root)


def test_a_directory_swapped_for_a_link_after_the_check_is_not_followed(
    root: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check saw a directory; by the time it is opened it is a link to outside. The
    O_NOFOLLOW open notices, the walk starts again and refuses the link."""
    from executors import confined_paths

    root.mkdir(parents=True)
    (root / "swap").symlink_to(outside)
    real_lstat = confined_paths._lstat
    lied: list[str] = []

    def stale_lstat(name: str, dir_fd: int) -> os.stat_result | None:
        if name == "swap" and not lied:
            lied.append(name)
            return os.stat(root)  # what it was when checked: a directory
        return real_lstat(name, dir_fd)

    monkeypatch.setattr(confined_paths, "_lstat", stale_lstat)
    message = fails({"operation": "read", "path": "/swap/secret.txt"}, root)
    assert lied and "leads outside the files root through a symbolic link" in message
