"""The one sandbox every piece of user code runs in, whatever its language.

A run is a bubblewrap (``bwrap``) container:

* its own user, PID, network, IPC, UTS and cgroup namespaces: no network at all (only a
  private loopback), no view of the host's processes, and every process of the run dies
  with it (the namespace's init is killed when the run ends, is timed out or killed);
* a read-only root holding only ``/usr`` (plus the ``/lib*``, ``/bin`` links or binds the
  host has), a minimal ``/etc`` (``ld.so.cache``, ``alternatives``, ``localtime``), a
  fresh ``/dev`` and ``/proc``, and read-only binds the caller asks for (an interpreter
  living outside ``/usr``); ``/root``, ``/home``, ``/var``, the rest of ``/etc`` and the
  application's own files are absent;
* one writable place, :data:`WORKDIR` (``/work``, also reached as ``/tmp``): a fresh tmpfs
  capped at ``Limits.disk_bytes``, filled with the caller's ``files`` and gone afterwards;
* a clean environment (nothing of the worker's ``os.environ``): ``PATH``, ``HOME``,
  ``TMPDIR``, ``LANG`` and whatever the caller adds;
* resource limits set by ``prlimit`` inside the namespaces, right before the program is
  executed: CPU seconds, memory (``RLIMIT_AS``, or ``RLIMIT_DATA`` for runtimes such as
  Node that reserve huge address ranges), file size, processes, open files, no core files;
* a wall-clock timeout and a cap on each of stdout and stderr, both enforced from outside
  by killing the whole process group.

``RLIMIT_NPROC`` is counted per user and does not apply to processes whose host uid is
root, so when the worker runs as root bubblewrap itself is started as the unprivileged
``SCHEDULER_SANDBOX_UID`` (default 65534, "nobody"): the code then runs as that uid both
inside and outside its namespace.

Needs bubblewrap 0.8 or later (``--disable-userns``, ``--size``) and ``prlimit``
(util-linux). If either is missing or bubblewrap fails a self-test, :func:`run_sandboxed` raises
:class:`SandboxUnavailable`; nothing is ever run unsandboxed.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from django.conf import settings

WORKDIR = "/work"
SANDBOX_UID = 65534
PRLIMIT = "/usr/bin/prlimit"
PROBE = ("/usr/bin/true",)
BASE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": WORKDIR,
    "TMPDIR": WORKDIR,
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
}
RESERVED = ("/", WORKDIR, "/tmp", "/dev", "/proc", "/usr")
HOST_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("/etc/ld.so.cache", "/etc/alternatives", "/etc/localtime")
SELF_TEST_SECONDS = 10.0
READ_CHUNK = 65536
MiB = 1 << 20

Killed = Literal["timeout", "output"]


class SandboxUnavailable(RuntimeError):
    """No sandbox can be set up on this machine; user code must not run."""


@dataclass(frozen=True)
class Limits:
    """What one run may use. ``memory_rlimit`` picks RLIMIT_AS or RLIMIT_DATA."""

    wall_seconds: float = 30.0
    cpu_seconds: int = 30
    memory_bytes: int = 256 * MiB
    memory_rlimit: Literal["as", "data"] = "as"
    disk_bytes: int = 64 * MiB
    processes: int = 32
    open_files: int = 256
    output_bytes: int = 256 * 1024


@dataclass(frozen=True)
class SandboxResult:
    """How a run ended. ``exit_code`` is None when the run was killed from outside
    (``killed`` says why); a program ended by signal N reports ``128 + N``."""

    exit_code: int | None
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    killed: Killed | None
    duration_ms: int

    @property
    def truncated(self) -> bool:
        return self.stdout_truncated or self.stderr_truncated

    @property
    def signal(self) -> int | None:
        """The signal that probably ended the program (bwrap reports it as 128 + N)."""
        if self.exit_code is not None and 128 < self.exit_code < 128 + 65:
            return self.exit_code - 128
        return None


def bwrap_path() -> str | None:
    configured = str(getattr(settings, "SCHEDULER_SANDBOX_BWRAP", "bwrap"))
    return shutil.which(configured)


def host_user() -> tuple[int, int] | None:
    """The (uid, gid) bubblewrap is started as; None keeps the worker's own user."""
    if os.geteuid() != 0:
        return None
    uid = int(getattr(settings, "SCHEDULER_SANDBOX_UID", SANDBOX_UID))
    return uid, uid


_passed: set[tuple[str, tuple[int, int] | None, tuple[str, ...], tuple[str, ...]]] = set()


def sandbox_available(probe: Sequence[str] = PROBE, *, ro_paths: Sequence[str] = ()) -> str | None:
    """None when ``probe`` runs and exits 0 in the sandbox, else the reason it cannot.

    A success is remembered for the process; a failure is checked again next time."""
    for path in ro_paths:
        if reason := _unshareable(path):
            return reason
    bwrap = bwrap_path()
    if bwrap is None:
        configured = getattr(settings, "SCHEDULER_SANDBOX_BWRAP", "bwrap")
        return f"bubblewrap not found ({configured!r}; install the 'bubblewrap' package)"
    if host_user() == (0, 0):
        return "SCHEDULER_SANDBOX_UID must not be 0"
    key = (bwrap, host_user(), tuple(probe), tuple(ro_paths))
    if key in _passed:
        return None
    reason = _self_test(bwrap, probe, ro_paths)
    if reason is None:
        _passed.add(key)
    return reason


def _unshareable(path: str) -> str | None:
    if not os.path.isabs(path):
        return f"cannot share {path!r}: not an absolute path"
    for own in RESERVED:
        if Path(path) == Path(own) or (own != "/" and Path(path).is_relative_to(own)):
            return f"cannot share {path}: the sandbox has its own {own}"
    return None


def _self_test(bwrap: str, probe: Sequence[str], ro_paths: Sequence[str]) -> str | None:
    if not os.access(PRLIMIT, os.X_OK):
        return f"{PRLIMIT} is missing (install util-linux)"
    argv = _command(bwrap, probe, Limits(memory_rlimit="data"), {}, {}, ro_paths)
    try:
        proc = _spawn(argv)
    except OSError as exc:
        return f"bubblewrap could not start: {exc}"
    with proc:
        try:
            _, stderr = proc.communicate(timeout=SELF_TEST_SECONDS)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            return f"{' '.join(probe)} did not finish in bubblewrap within {SELF_TEST_SECONDS:g} s"
    if proc.returncode != 0:
        detail = stderr.decode(errors="replace").strip()[-300:] or "no message"
        return f"{' '.join(probe)} failed in bubblewrap (exit {proc.returncode}): {detail}"
    return None


def run_sandboxed(
    argv: Sequence[str],
    *,
    files: Mapping[str, bytes],
    limits: Limits,
    env: Mapping[str, str] | None = None,
    ro_paths: Sequence[str] = (),
) -> SandboxResult:
    """Run ``argv`` in a fresh sandbox whose :data:`WORKDIR` holds ``files``.

    ``files`` maps names relative to the workdir to their content; ``env`` adds to
    :data:`BASE_ENV`; ``ro_paths`` are host paths bound read-only at the same place."""
    reason = sandbox_available(ro_paths=ro_paths)
    bwrap = bwrap_path()
    if reason is not None or bwrap is None:
        raise SandboxUnavailable(reason or "bubblewrap not found")
    with ExitStack() as stack:
        fds = {name: _memfd(stack, name, data) for name, data in files.items()}
        command = _command(bwrap, argv, limits, fds, dict(env or {}), ro_paths)
        started = time.monotonic()
        proc = _spawn(command, pass_fds=tuple(fds.values()))
        with proc:
            return _supervise(proc, limits, started)


def _spawn(command: list[str], pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
    """Start bubblewrap in its own process group, as :func:`host_user` when root."""
    user = host_user()
    return subprocess.Popen(
        command,
        env={"PATH": BASE_ENV["PATH"]},
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=pass_fds,
        user=None if user is None else user[0],
        group=None if user is None else user[1],
        extra_groups=None if user is None else [],
    )


def _memfd(stack: ExitStack, name: str, data: bytes) -> int:
    fd = os.memfd_create(Path(name).name or "file")
    stack.callback(os.close, fd)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _command(
    bwrap: str,
    argv: Sequence[str],
    limits: Limits,
    fds: Mapping[str, int],
    env: Mapping[str, str],
    ro_paths: Sequence[str],
) -> list[str]:
    return [
        bwrap,
        *_namespaces(),
        *_filesystem(ro_paths),
        *_workdir(limits, fds),
        "--remount-ro",
        "/dev",
        "--remount-ro",
        "/",
        "--chdir",
        WORKDIR,
        *_environment(env),
        "--",
        *_prlimit(limits),
        *argv,
    ]


def _namespaces() -> list[str]:
    return [
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_UID),
        "--hostname",
        "sandbox",
        "--die-with-parent",
        "--new-session",
    ]


def _filesystem(ro_paths: Sequence[str]) -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for path in HOST_LINKS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in ETC_FILES:
        args += ["--ro-bind-try", path, path]
    for path in ro_paths:
        args += ["--ro-bind", path, path]
    return [*args, "--dev", "/dev", "--proc", "/proc"]


def _workdir(limits: Limits, fds: Mapping[str, int]) -> list[str]:
    args = ["--size", str(limits.disk_bytes), "--tmpfs", WORKDIR, "--symlink", WORKDIR, "/tmp"]
    for name, fd in fds.items():
        args += ["--file", str(fd), _inside_workdir(name)]
    return args


def _inside_workdir(name: str) -> str:
    path = os.path.normpath(os.path.join(WORKDIR, name))
    if os.path.dirname(path) != WORKDIR:
        raise ValueError(f"sandbox file {name!r} must be a plain name inside the workdir")
    return path


def _environment(env: Mapping[str, str]) -> list[str]:
    args = ["--clearenv"]
    for key, value in {**BASE_ENV, **env}.items():
        args += ["--setenv", key, value]
    return args


def _prlimit(limits: Limits) -> list[str]:
    cpu = max(1, limits.cpu_seconds)
    return [
        PRLIMIT,
        f"--cpu={cpu}:{cpu + 1}",
        f"--{limits.memory_rlimit}={limits.memory_bytes}",
        f"--fsize={limits.disk_bytes}",
        f"--nproc={limits.processes}",
        f"--nofile={limits.open_files}",
        "--core=0",
        "--",
    ]


def _supervise(proc: subprocess.Popen[bytes], limits: Limits, started: float) -> SandboxResult:
    deadline = started + limits.wall_seconds
    assert proc.stdout is not None and proc.stderr is not None
    streams = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    truncated: set[int] = set()
    killed = _pump(proc, streams, truncated, limits.output_bytes, deadline)
    if killed is None and not _exited(proc, deadline):
        killed = "timeout"
    _kill_group(proc)
    proc.wait()
    out, err = proc.stdout.fileno(), proc.stderr.fileno()
    return SandboxResult(
        exit_code=None if killed else proc.returncode,
        stdout=bytes(streams[out]),
        stderr=bytes(streams[err]),
        stdout_truncated=out in truncated,
        stderr_truncated=err in truncated,
        killed=killed,
        duration_ms=round((time.monotonic() - started) * 1000),
    )


def _pump(
    proc: subprocess.Popen[bytes],
    streams: dict[int, bytearray],
    truncated: set[int],
    cap: int,
    deadline: float,
) -> Killed | None:
    """Read both pipes to their end, the deadline or the output cap, whichever is first."""
    with selectors.DefaultSelector() as selector:
        for fd in streams:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _kill_group(proc)
                return "timeout"
            for key, _ in selector.select(remaining):
                fd = int(key.fd)
                chunk = os.read(fd, READ_CHUNK)
                if not chunk:
                    selector.unregister(fd)
                    continue
                buffer = streams[fd]
                room = cap - len(buffer)
                buffer += chunk[:room]
                if len(chunk) > room:
                    truncated.add(fd)
                    _kill_group(proc)
                    return "output"
    return None


def _exited(proc: subprocess.Popen[bytes], deadline: float) -> bool:
    """Wait for bwrap to exit by the deadline, leaving it unreaped so its group stays ours."""
    while True:
        if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
