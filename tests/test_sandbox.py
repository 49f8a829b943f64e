"""executors.sandbox: real bubblewrap runs (no mocks) showing each limit holds.

Tests that need bubblewrap skip loudly without it, and fail when CI=true."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from executors import sandbox
from executors.run_code import failure_reason
from executors.sandbox import Limits, SandboxResult, SandboxUnavailable, run_sandboxed
from tests.services import unavailable

PYTHON = "/usr/bin/python3"


def require_sandbox() -> None:
    """Skip (loudly) when no sandbox can be set up here; fail when CI=true."""
    reason = sandbox.sandbox_available()
    if reason is None:
        return
    message = f"the bubblewrap sandbox is unavailable: {reason}"
    unavailable(message, remedy="install bubblewrap to run this test", label="SANDBOX MISSING")


@pytest.fixture
def needs_sandbox() -> None:
    require_sandbox()


def marker() -> str:
    """A unique argument for `sleep` so the test can find its processes on the host."""
    return f"{9000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**9:09d}"


def processes_with_argument(argument: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argument.encode() in argv:
            found.append(int(entry.name))
    return found


def assert_no_survivors(argument: str) -> None:
    deadline = time.monotonic() + 3
    while processes_with_argument(argument) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with_argument(argument) == []


def python(code: str, limits: Limits | None = None, **kwargs: Any) -> SandboxResult:
    return run_sandboxed(
        [PYTHON, "-I", "-c", code], files=kwargs.pop("files", {}), limits=limits or Limits()
    )


def test_runs_with_files_in_a_fresh_workdir_and_a_clean_environment(needs_sandbox: None) -> None:
    result = python(
        "import os, json; print(json.dumps([os.getcwd(), sorted(os.listdir('.')), "
        "open('data.txt').read(), dict(os.environ), os.getuid()]))",
        files={"data.txt": b"hello"},
    )
    assert result.exit_code == 0, result.stderr
    cwd, listing, content, env, uid = json.loads(result.stdout)
    assert (cwd, listing, content, uid) == ("/work", ["data.txt"], "hello", 65534)
    assert set(env) <= {*sandbox.BASE_ENV, "PWD"}
    assert result.killed is None and not result.truncated and result.duration_ms > 0


def test_exit_code_and_stderr_come_back(needs_sandbox: None) -> None:
    result = python("import sys; print('out'); print('err', file=sys.stderr); sys.exit(7)")
    assert (result.exit_code, result.stdout, result.stderr) == (7, b"out\n", b"err\n")


def test_the_worker_environment_does_not_reach_the_code(
    needs_sandbox: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = f"s3cret-{uuid.uuid4()}"
    monkeypatch.setenv("SCHEDULER_TEST_SECRET", secret)
    result = python(
        "import os\n"
        "print(dict(os.environ))\n"
        "for path in ('/proc/1/environ', '/proc/self/environ', f'/proc/{os.getppid()}/environ'):\n"
        "    print(open(path, 'rb').read())\n"
    )
    assert result.exit_code == 0, result.stderr
    assert secret.encode() not in result.stdout
    assert b"SCHEDULER_TEST_SECRET" not in result.stdout


def test_only_the_workdir_is_writable(needs_sandbox: None) -> None:
    host_probe = Path("/tmp") / f"sandbox-probe-{uuid.uuid4()}"
    result = python(
        "import json, os\n"
        "verdicts = {}\n"
        f"for d in ('/', '/usr', '/usr/lib', '/etc', '/dev', '/dev/shm', '/proc', '/root', '/var', "
        f"'/work', '/tmp'):\n"
        f"    path = os.path.join(d, {host_probe.name!r})\n"
        "    try:\n"
        "        open(path, 'w').write('x')\n"
        "        verdicts[d] = 'written'\n"
        "    except OSError as exc:\n"
        "        verdicts[d] = exc.strerror\n"
        "print(json.dumps(verdicts))\n"
    )
    verdicts = json.loads(result.stdout)
    assert {d for d, v in verdicts.items() if v == "written"} == {"/work", "/tmp"}
    assert not host_probe.exists()


def test_output_beyond_the_cap_is_cut_and_the_run_killed(needs_sandbox: None) -> None:
    started = time.monotonic()
    result = python("while True: print('x' * 999)", Limits(output_bytes=10_000))
    assert result.killed == "output" and result.exit_code is None
    assert len(result.stdout) == 10_000 and result.stdout_truncated and result.truncated
    assert time.monotonic() - started < 5


def test_output_exactly_at_the_cap_is_not_truncated(needs_sandbox: None) -> None:
    result = python("import sys; sys.stdout.write('y' * 4096)", Limits(output_bytes=4096))
    assert (result.exit_code, len(result.stdout), result.truncated) == (0, 4096, False)


def test_wall_clock_timeout_kills_the_run_and_its_background_processes(needs_sandbox: None) -> None:
    mark = marker()
    started = time.monotonic()
    result = python(
        "import subprocess\n"
        f"subprocess.Popen(['/usr/bin/sleep', {mark!r}], start_new_session=True)\n"
        "print('started', flush=True)\n"
        "while True: pass\n",
        Limits(wall_seconds=1),
    )
    assert result.killed == "timeout" and result.exit_code is None
    assert result.stdout == b"started\n"
    assert 1 <= time.monotonic() - started < 4
    assert_no_survivors(mark)


def test_cpu_time_limit_ends_the_program_with_sigxcpu(needs_sandbox: None) -> None:
    limits = Limits(cpu_seconds=1, wall_seconds=10)
    result = python("while True: pass", limits)
    assert result.killed is None and result.signal == signal.SIGXCPU
    assert "CPU time limit (1 s)" in str(failure_reason(result, limits, "python"))


def test_processes_are_capped_per_run(needs_sandbox: None) -> None:
    mark = marker()
    result = python(
        "import os\n"
        "forks = failures = 0\n"
        "while failures < 100:\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        failures += 1\n"
        "        continue\n"
        "    if pid == 0:\n"
        f"        os.execv('/usr/bin/sleep', ['sleep', {mark!r}])\n"
        "    forks += 1\n"
        "print(forks)\n",
        Limits(processes=12),
    )
    assert result.exit_code == 0, result.stderr
    assert 0 < int(result.stdout) < 12
    assert_no_survivors(mark)
    assert subprocess.run(["/usr/bin/true"], timeout=5).returncode == 0


def test_memory_is_capped(needs_sandbox: None) -> None:
    result = python("blob = bytearray(512 * 1024 * 1024)", Limits(memory_bytes=128 * sandbox.MiB))
    assert result.exit_code == 1 and b"MemoryError" in result.stderr


def test_workdir_size_is_capped(needs_sandbox: None) -> None:
    result = python(
        "i = 0\nwhile True:\n    i += 1\n    open(f'f{i}', 'wb').write(b'x' * 100_000)\n",
        Limits(disk_bytes=4 * sandbox.MiB),
    )
    assert result.exit_code == 1 and b"No space left on device" in result.stderr


def test_unknown_bwrap_refuses_to_run(settings: Any, tmp_path: Path) -> None:
    settings.SCHEDULER_SANDBOX_BWRAP = str(tmp_path / "no-bwrap")
    assert "bubblewrap not found" in str(sandbox.sandbox_available())
    with pytest.raises(SandboxUnavailable, match="bubblewrap not found"):
        python(f"open({str(tmp_path / 'ran')!r}, 'w')")
    assert not (tmp_path / "ran").exists()


def test_a_bwrap_failing_its_self_test_refuses_to_run(settings: Any) -> None:
    settings.SCHEDULER_SANDBOX_BWRAP = "/usr/bin/false"
    with pytest.raises(SandboxUnavailable, match="failed in bubblewrap"):
        python("print(1)")


def test_file_names_stay_inside_the_workdir() -> None:
    with pytest.raises(ValueError, match="inside the workdir"):
        python("print(1)", files={"../etc/x": b""})


@pytest.mark.parametrize("path", ["/", "/tmp/python", "/work", "/proc/1", "relative/bin"])
def test_paths_the_sandbox_owns_cannot_be_shared(path: str) -> None:
    assert "cannot share" in str(sandbox.sandbox_available(ro_paths=[path]))
