"""executors.run_code.RunCodeExecutor: real Python and Node runs in the bubblewrap sandbox.

Tests that need bubblewrap skip loudly without it, and fail when CI=true."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from executors.base import ActionResult, ExecutionContext
from executors.errors import ConfigError, PermanentError
from executors.run_code import RunCodeExecutor, last_json_line
from tests.executor_ctx import make_ctx
from tests.test_sandbox import assert_no_survivors, marker, require_sandbox

EXECUTOR = RunCodeExecutor()
REPO = Path(__file__).resolve().parents[1]
LANGUAGES = ["python", "javascript"]


@pytest.fixture
def logs() -> list[str]:
    return []


@pytest.fixture
def ctx(logs: list[str]) -> ExecutionContext:
    return make_ctx(logs, idempotency_key="exec-1:attempt-1")[0]


@pytest.fixture
def needs_sandbox() -> None:
    require_sandbox()


def run(
    language: str, code: str, ctx: ExecutionContext, previous: Any = None, **extra: Any
) -> ActionResult:
    config = EXECUTOR.validate({"type": "run-code", "language": language, "code": code, **extra})
    if previous is not None:
        ctx = _with(ctx, previous_result=previous)
    return EXECUTOR.execute(config, ctx)


def _with(ctx: ExecutionContext, **changes: Any) -> ExecutionContext:
    return dataclasses.replace(ctx, **changes)


def fails(language: str, code: str, ctx: ExecutionContext, **extra: Any) -> str:
    with pytest.raises(PermanentError) as caught:
        run(language, code, ctx, **extra)
    return str(caught.value)


# --- config ------------------------------------------------------------------------------


def test_the_guides_config_shape_is_accepted() -> None:
    config = EXECUTOR.validate({"type": "run-code", "language": "python", "code": "print(1)"})
    assert (config.language, config.timeout_seconds, config.memory_mb) == ("python", None, None)


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ({"language": "ruby"}, "language"),
        ({"code": ""}, "code"),
        ({"timeoutSeconds": 0}, "timeoutSeconds"),
        ({"timeoutSeconds": 301}, "timeoutSeconds"),
        ({"memoryMb": 16}, "memoryMb"),
        ({"memoryMb": 4096}, "memoryMb"),
        ({"network": True}, "network"),
    ],
)
def test_bad_configs_are_refused(extra: dict[str, Any], path: str) -> None:
    raw = {"type": "run-code", "language": "python", "code": "print(1)", **extra}
    with pytest.raises(ConfigError) as caught:
        EXECUTOR.validate(raw)
    assert [p for p, _ in caught.value.errors] == [path]


@pytest.mark.parametrize(
    ("stdout", "expected"),
    [
        ('{"a": 1}\n', {"a": 1}),
        ("log line\n[1, 2]\n\n  \n", [1, 2]),
        ("42\n", 42),
        ("done\n", None),
        ("NaN\n", None),
        ("", None),
    ],
)
def test_json_is_the_last_non_empty_stdout_line(stdout: str, expected: Any) -> None:
    assert last_json_line(stdout) == expected


# --- running -----------------------------------------------------------------------------

HELLO = {
    "python": "import json\nprint('hello')\nprint(json.dumps({'sum': 1 + 2}))",
    "javascript": "console.log('hello');\nconsole.log(JSON.stringify({sum: 1 + 2}));",
}
HELLO_STDOUT = {"python": 'hello\n{"sum": 3}\n', "javascript": 'hello\n{"sum":3}\n'}


@pytest.mark.parametrize("language", LANGUAGES)
def test_prints_exit_code_and_json_result(
    needs_sandbox: None, language: str, ctx: ExecutionContext, logs: list[str]
) -> None:
    result = run(language, HELLO[language], ctx)
    output = result.output
    assert output["stdout"] == HELLO_STDOUT[language]
    assert (output["stderr"], output["exitCode"], output["truncated"]) == ("", 0, False)
    assert output["json"] == {"sum": 3}
    assert isinstance(output["durationMs"], int) and output["durationMs"] > 0
    assert any("exit code 0" in line for line in logs)


PREVIOUS = {
    "python": "import json\n"
    "print(json.dumps({'got': previous_result, 'file': json.load(open('input.json'))}))",
    "javascript": "const fs = require('fs');\n"
    "console.log(JSON.stringify({got: previousResult, alias: previous_result,"
    " file: JSON.parse(fs.readFileSync('input.json', 'utf8'))}));",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_previous_result_reaches_the_code(
    needs_sandbox: None, language: str, ctx: ExecutionContext
) -> None:
    previous = {"items": [1, 2], "quote": "'\"); raise SystemExit(9) #`${x}`"}
    output = run(language, PREVIOUS[language], ctx, previous=previous).output
    assert output["json"]["got"] == previous
    assert output["json"]["file"] == previous
    if language == "javascript":
        assert output["json"]["alias"] == previous


def test_no_previous_result_is_null(needs_sandbox: None, ctx: ExecutionContext) -> None:
    assert run("python", "print(repr(previous_result))", ctx).output["stdout"] == "None\n"


FAILING = {
    "python": "import sys\nprint('partial')\nprint('boom', file=sys.stderr)\nsys.exit(3)",
    "javascript": "console.log('partial');\nconsole.error('boom');\nprocess.exit(3);",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_non_zero_exit_fails_with_code_and_stderr(
    needs_sandbox: None, language: str, ctx: ExecutionContext, logs: list[str]
) -> None:
    message = fails(language, FAILING[language], ctx)
    assert "exit code 3" in message and "boom" in message
    assert "stdout: partial\n" in logs and "stderr: boom\n" in logs


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("python", "raise RuntimeError('kaput')"),
        ("javascript", "throw new Error('kaput');"),
    ],
)
def test_an_uncaught_error_fails(
    needs_sandbox: None, language: str, code: str, ctx: ExecutionContext
) -> None:
    message = fails(language, code, ctx)
    assert "exit code 1" in message and "kaput" in message


# --- isolation ---------------------------------------------------------------------------

CONNECT = {
    "python": "import json, socket\n"
    "errors = []\n"
    "for address in [('127.0.0.1', previous_result), ('1.1.1.1', 53)]:\n"
    "    try:\n"
    "        socket.create_connection(address, timeout=2).close()\n"
    "        errors.append('connected')\n"
    "    except OSError as exc:\n"
    "        errors.append(type(exc).__name__)\n"
    "print(json.dumps(errors))",
    "javascript": "const net = require('net');\n"
    "const tryConnect = (port, host) => new Promise((resolve) => {\n"
    "  const s = net.connect({port, host, timeout: 2000});\n"
    "  s.on('connect', () => { s.destroy(); resolve('connected'); });\n"
    "  s.on('error', (e) => resolve(e.code));\n"
    "  s.on('timeout', () => { s.destroy(); resolve('timeout'); });\n"
    "});\n"
    "Promise.all([tryConnect(previousResult, '127.0.0.1'), tryConnect(53, '1.1.1.1')])\n"
    "  .then((r) => console.log(JSON.stringify(r)));",
}


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.2)
        yield server


@pytest.mark.parametrize("language", LANGUAGES)
def test_no_network_not_even_the_hosts_loopback(
    needs_sandbox: None, language: str, ctx: ExecutionContext, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    output = run(language, CONNECT[language], ctx, previous=port).output
    assert "connected" not in output["json"] and len(output["json"]) == 2
    with pytest.raises(TimeoutError):
        listener.accept()


ENVIRONMENT = {
    "python": "import os\nprint(dict(os.environ))\n"
    "print(open('/proc/1/environ', 'rb').read(), open('/proc/self/environ', 'rb').read())\n"
    "try:\n    print(open(f'/proc/{previous_result}/environ', 'rb').read())\n"
    "except OSError as exc:\n    print(exc)",
    "javascript": "const fs = require('fs');\nconsole.log(JSON.stringify(process.env));\n"
    "console.log(fs.readFileSync('/proc/1/environ', 'utf8'));\n"
    "try { console.log(fs.readFileSync(`/proc/${previousResult}/environ`, 'utf8')); }\n"
    "catch (e) { console.log(e.code); }",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_workers_environment_is_invisible(
    needs_sandbox: None, language: str, ctx: ExecutionContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = f"s3cret-{uuid.uuid4()}"
    monkeypatch.setenv("SCHEDULER_TEST_SECRET", secret)
    assert os.environ["SCHEDULER_TEST_SECRET"] == secret
    stdout = run(language, ENVIRONMENT[language], ctx, previous=os.getpid()).output["stdout"]
    assert secret not in stdout and "SCHEDULER_TEST_SECRET" not in stdout
    assert "HOME" in stdout


def test_host_files_are_absent(needs_sandbox: None, ctx: ExecutionContext) -> None:
    paths = ["/root", "/home", "/var", "/etc/passwd", "/etc/shadow", str(REPO / "pyproject.toml")]
    code = "import json, os\nprint(json.dumps({p: os.path.exists(p) for p in previous_result}))"
    output = run("python", code, ctx, previous=[*paths, "/usr/lib"]).output
    assert output["json"] == {**dict.fromkeys(paths, False), "/usr/lib": True}


WRITES = {
    "python": "import json\nverdicts = {}\nfor d in previous_result:\n"
    "    try:\n        open(d + '/probe.txt', 'w').write('x')\n        verdicts[d] = 'written'\n"
    "    except OSError as exc:\n        verdicts[d] = exc.errno\nprint(json.dumps(verdicts))",
    "javascript": "const fs = require('fs');\nconst verdicts = {};\n"
    "for (const d of previousResult) {\n"
    "  try { fs.writeFileSync(d + '/probe.txt', 'x'); verdicts[d] = 'written'; }\n"
    "  catch (e) { verdicts[d] = e.code; }\n}\nconsole.log(JSON.stringify(verdicts));",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_cannot_write_outside_the_workdir(
    needs_sandbox: None, language: str, ctx: ExecutionContext
) -> None:
    places = [
        "/",
        "/usr",
        "/usr/bin",
        "/etc",
        "/dev",
        "/dev/shm",
        "/proc",
        "/root",
        "/work",
        "/tmp",
    ]
    verdicts = run(language, WRITES[language], ctx, previous=places).output["json"]
    assert {d for d, v in verdicts.items() if v == "written"} == {"/work", "/tmp"}


# --- limits ------------------------------------------------------------------------------

SPIN = {"python": "while True: pass", "javascript": "while (true) {}"}


@pytest.mark.parametrize("language", LANGUAGES)
def test_an_endless_loop_is_killed_at_the_timeout(
    needs_sandbox: None, language: str, ctx: ExecutionContext
) -> None:
    started = time.monotonic()
    message = fails(language, SPIN[language], ctx, timeoutSeconds=1)
    assert "ran past its 1 s limit and was killed" in message
    assert time.monotonic() - started < 4


def test_the_timeout_respects_the_attempts_time_budget(
    needs_sandbox: None, ctx: ExecutionContext
) -> None:
    started = time.monotonic()
    message = fails("python", SPIN["python"], _with(ctx, time_budget=0.8), timeoutSeconds=60)
    assert "ran past its 0.8 s limit" in message
    assert time.monotonic() - started < 4


def test_no_budget_left_refuses_to_start(ctx: ExecutionContext) -> None:
    assert "no time left" in fails("python", "print(1)", _with(ctx, time_budget=0))


MEMORY_BOMB = {
    "python": "chunks = []\nwhile True:\n    chunks.append(bytearray(10_000_000))",
    "javascript": "const chunks = [];\nwhile (true) chunks.push(new Array(1e6).fill(1.5));",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_memory_bomb_fails_on_the_memory_limit(
    needs_sandbox: None, language: str, ctx: ExecutionContext
) -> None:
    message = fails(language, MEMORY_BOMB[language], ctx, memoryMb=96, timeoutSeconds=10)
    assert "ran out of memory (limit 96 MB)" in message


def test_a_huge_node_buffer_fails_on_the_memory_limit(
    needs_sandbox: None, ctx: ExecutionContext
) -> None:
    message = fails("javascript", "Buffer.alloc(1e9).fill(1);", ctx, memoryMb=96)
    assert "ran out of memory" in message


DISK_BOMB = {
    "python": "i = 0\nwhile True:\n    i += 1\n    open(f'f{i}', 'wb').write(b'x' * 1_000_000)",
    "javascript": "const fs = require('fs');\nconst mb = Buffer.alloc(1e6, 120);\n"
    "while (true) fs.appendFileSync('big.bin', mb);",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_disk_bomb_is_stopped(
    needs_sandbox: None, language: str, ctx: ExecutionContext, settings: Any
) -> None:
    settings.SCHEDULER_SANDBOX_DISK_MB = 8
    message = fails(language, DISK_BOMB[language], ctx, timeoutSeconds=10)
    assert "hit its disk limit (8 MB)" in message


RUNAWAY = {
    "python": "while True: print('y' * 99)",
    "javascript": "for (;;) console.log('y'.repeat(99));",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_runaway_output_is_capped(
    needs_sandbox: None, language: str, ctx: ExecutionContext, settings: Any, logs: list[str]
) -> None:
    settings.SCHEDULER_SANDBOX_OUTPUT_BYTES = 20_000
    started = time.monotonic()
    message = fails(language, RUNAWAY[language], ctx, timeoutSeconds=10)
    assert "wrote more than 20000 bytes of output and was killed" in message
    assert any("output truncated" in line for line in logs)
    assert time.monotonic() - started < 5


def test_a_fork_bomb_is_contained(
    needs_sandbox: None, ctx: ExecutionContext, settings: Any
) -> None:
    settings.SCHEDULER_SANDBOX_PROCESSES = 16
    mark = marker()
    bomb = (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    code = (
        "import os, sys\n"
        f"os.execv(sys.executable, [sys.executable, '-c', {bomb!r}, previous_result])"
    )
    started = time.monotonic()
    message = fails("python", code, _with(ctx, previous_result=mark), timeoutSeconds=1)
    assert "ran past its 1 s limit" in message
    assert time.monotonic() - started < 4
    assert_no_survivors(mark)
    assert subprocess.run(["/usr/bin/true"], timeout=5).returncode == 0


BACKGROUND = {
    "python": "import subprocess\nsubprocess.Popen(['/usr/bin/sleep', previous_result], "
    "start_new_session=True)\nprint('started')",
    "javascript": "require('child_process').spawn('/usr/bin/sleep', [previousResult],"
    " {detached: true, stdio: 'ignore'}).unref();\nconsole.log('started');",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_background_processes_die_with_the_run(
    needs_sandbox: None, language: str, ctx: ExecutionContext
) -> None:
    mark = marker()
    started = time.monotonic()
    output = run(language, BACKGROUND[language], ctx, previous=mark).output
    assert output["stdout"] == "started\n"
    assert time.monotonic() - started < 5
    assert_no_survivors(mark)


# --- no sandbox, no run ------------------------------------------------------------------


@pytest.mark.parametrize("language", LANGUAGES)
def test_refuses_to_run_without_a_sandbox(
    language: str, ctx: ExecutionContext, settings: Any, tmp_path: Path
) -> None:
    settings.SCHEDULER_SANDBOX_BWRAP = str(tmp_path / "missing-bwrap")
    ran = tmp_path / "ran"
    code = {
        "python": f"open({str(ran)!r}, 'w')",
        "javascript": f"require('fs').writeFileSync({str(ran)!r}, 'x')",
    }[language]
    message = fails(language, code, ctx)
    assert message.startswith("run-code is disabled: no sandbox: bubblewrap not found")
    assert not ran.exists()


def test_refuses_when_the_interpreter_cannot_run_in_the_sandbox(
    needs_sandbox: None, ctx: ExecutionContext, settings: Any
) -> None:
    settings.SCHEDULER_SANDBOX_NODE = "/usr/bin/no-such-node"
    message = fails("javascript", "console.log(1)", ctx)
    assert message.startswith("run-code is disabled: no sandbox:")
    assert "/usr/bin/no-such-node" in message


@pytest.fixture
def python_outside_usr() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="sandbox-python-", dir="/var/tmp"))
    try:
        interpreter = root / "opt" / "bin" / "python3"
        interpreter.parent.mkdir(parents=True)
        shutil.copy(os.path.realpath("/usr/bin/python3"), interpreter)
        for path in (root, root / "opt", interpreter.parent):
            path.chmod(0o755)
        interpreter.chmod(interpreter.stat().st_mode | stat.S_IXOTH | stat.S_IROTH)
        yield interpreter
    finally:
        shutil.rmtree(root)


def test_an_interpreter_outside_usr_is_bound_read_only(
    needs_sandbox: None, ctx: ExecutionContext, settings: Any, python_outside_usr: Path
) -> None:
    settings.SCHEDULER_SANDBOX_PYTHON = str(python_outside_usr)
    code = (
        "import json, os, sys\n"
        "try:\n    open(sys.executable, 'ab')\n    writable = True\n"
        "except OSError:\n    writable = False\n"
        "print(json.dumps([sys.executable, writable]))"
    )
    assert run("python", code, ctx).output["json"] == [str(python_outside_usr), False]
