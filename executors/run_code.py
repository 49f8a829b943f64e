"""run-code: a short Python or JavaScript program, run in :mod:`executors.sandbox`.

Config: ``{"type": "run-code", "language": "python" | "javascript", "code": "...",
"timeoutSeconds"?: number, "memoryMb"?: integer}``.

The program runs in a fresh sandbox with no network, a clean environment and only its
working directory ``/work`` (also ``/tmp``) writable; Python with ``SCHEDULER_SANDBOX_PYTHON``
(default ``/usr/bin/python3``, run isolated: ``-I``), JavaScript with
``SCHEDULER_SANDBOX_NODE`` (default ``/usr/bin/node``, CommonJS).

Input: the previous chain step's result (null for a first or single step) is written to
``/work/input.json`` and is also ready as a global, ``previous_result`` in Python and
``previousResult`` (alias ``previous_result``) in JavaScript. The code itself is stored as
``/work/main.py`` or ``/work/main.js`` and run by a fixed prelude; no data is ever
templated into it.

Output (``ActionResult.output``): ``stdout``, ``stderr`` (each capped at
``SCHEDULER_SANDBOX_OUTPUT_BYTES``; ``truncated`` says whether either was cut), ``exitCode``,
``durationMs`` and ``json``: **the last non-empty line of stdout, when it parses as JSON**
(``print(json.dumps(result))`` / ``console.log(JSON.stringify(result))`` as the last
output), else null.

Failures are permanent (another attempt runs the same code): a non-zero exit (message with
the exit code and the tail of stderr), running past the wall-clock limit (the smaller of
``timeoutSeconds`` and the attempt's time budget), hitting the memory, CPU, disk or output
limit, and a machine where no sandbox can be set up ("run-code is disabled: no sandbox").
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from django.conf import settings
from pydantic import Field

from . import sandbox
from .base import ActionConfig, ActionResult, ExecutionContext, Executor
from .errors import PermanentError

Language = Literal["python", "javascript"]
MAX_CODE_CHARS = 100_000
MAX_TIMEOUT_SECONDS = 300
STDERR_TAIL_CHARS = 500
LOG_TAIL_CHARS = 2000

PYTHON_PRELUDE = """\
import json
with open("/work/input.json", encoding="utf-8") as _f:
    _input = json.load(_f)
with open("/work/main.py", encoding="utf-8") as _f:
    _code = compile(_f.read(), "/work/main.py", "exec")
del _f
exec(_code, {"__name__": "__main__", "__file__": "/work/main.py", "previous_result": _input})
"""

JS_PRELUDE = """\
const input = JSON.parse(require("fs").readFileSync("/work/input.json", "utf8"));
globalThis.previousResult = input;
globalThis.previous_result = input;
require("/work/main.js");
"""

MEMORY_MARKERS = (
    "MemoryError",
    "JavaScript heap out of memory",
    "Array buffer allocation failed",
    "Cannot allocate memory",
    "std::bad_alloc",
    "ENOMEM",
)
RUNTIME_NOISE = re.compile(
    r'\s+at (.*\()?node:|Node\.js v\d|\s*\d+: 0x|\s+File "<string>"|\s*\^+\s*$|\s*$'
)
DISK_MARKERS = ("File too large", "No space left on device", "EFBIG", "ENOSPC")


class RunCodeConfig(ActionConfig):
    type: Literal["run-code"]
    language: Language
    code: str = Field(min_length=1, max_length=MAX_CODE_CHARS)
    timeout_seconds: float | None = Field(
        default=None, alias="timeoutSeconds", gt=0, le=MAX_TIMEOUT_SECONDS
    )
    memory_mb: int | None = Field(default=None, alias="memoryMb", ge=64, le=2048)


@dataclass(frozen=True)
class Program:
    argv: list[str]
    files: dict[str, bytes]
    ro_paths: list[str]
    limits: sandbox.Limits


class RunCodeExecutor(Executor[RunCodeConfig]):
    action_type: ClassVar[str] = "run-code"
    Config = RunCodeConfig

    def execute(self, config: RunCodeConfig, ctx: ExecutionContext) -> ActionResult:
        program = build_program(config, ctx)
        reason = sandbox.sandbox_available(
            program.argv[:1] + ["--version"], ro_paths=program.ro_paths
        )
        if reason is not None:
            raise PermanentError(f"run-code is disabled: no sandbox: {reason}")
        ctx.log(f"running {config.language} code ({len(config.code)} chars) in the sandbox")
        try:
            result = sandbox.run_sandboxed(
                program.argv,
                files=program.files,
                limits=program.limits,
                env=_environment(config.language),
                ro_paths=program.ro_paths,
            )
        except sandbox.SandboxUnavailable as exc:
            raise PermanentError(f"run-code is disabled: no sandbox: {exc}") from None
        output = _output(result)
        _log(ctx, output, result)
        failure = failure_reason(result, program.limits, config.language)
        if failure is not None:
            raise PermanentError(failure)
        return ActionResult(output=output, meta={"language": config.language})


def build_program(config: RunCodeConfig, ctx: ExecutionContext) -> Program:
    limits = _limits(config, ctx)
    source = "main.py" if config.language == "python" else "main.js"
    files = {
        "input.json": json.dumps(ctx.previous_result, default=str).encode(),
        source: config.code.encode(),
    }
    if config.language == "python":
        interpreter = _setting("SCHEDULER_SANDBOX_PYTHON", "/usr/bin/python3")
        argv = [interpreter, "-I", "-B", "-u", "-c", PYTHON_PRELUDE]
    else:
        interpreter = _setting("SCHEDULER_SANDBOX_NODE", "/usr/bin/node")
        heap_mb = max(16, limits.memory_bytes * 3 // 4 // sandbox.MiB)
        argv = [interpreter, f"--max-old-space-size={heap_mb}", "-e", JS_PRELUDE]
    return Program(argv=argv, files=files, ro_paths=interpreter_paths(interpreter), limits=limits)


def interpreter_paths(interpreter: str) -> list[str]:
    """Read-only binds an interpreter needs beyond /usr: its real install prefix."""
    real = Path(os.path.realpath(interpreter))
    if real.is_relative_to("/usr"):
        return []
    prefix = real.parent.parent
    if prefix == Path("/"):
        raise PermanentError(
            f"run-code is disabled: no sandbox: the interpreter {interpreter} has no "
            "install prefix below / that could be shared read-only"
        )
    return [str(prefix)]


def _limits(config: RunCodeConfig, ctx: ExecutionContext) -> sandbox.Limits:
    timeout = config.timeout_seconds or float(_setting("SCHEDULER_SANDBOX_TIMEOUT_SECONDS", 30))
    wall = min(timeout, ctx.time_budget)
    if wall <= 0:
        raise PermanentError("no time left in this attempt's budget to run the code")
    memory_mb = config.memory_mb or int(_setting("SCHEDULER_SANDBOX_MEMORY_MB", 256))
    return sandbox.Limits(
        wall_seconds=wall,
        cpu_seconds=math.ceil(wall),
        memory_bytes=memory_mb * sandbox.MiB,
        memory_rlimit="as" if config.language == "python" else "data",
        disk_bytes=int(_setting("SCHEDULER_SANDBOX_DISK_MB", 64)) * sandbox.MiB,
        processes=int(_setting("SCHEDULER_SANDBOX_PROCESSES", 32)),
        output_bytes=int(_setting("SCHEDULER_SANDBOX_OUTPUT_BYTES", 256 * 1024)),
    )


def _setting(name: str, default: Any) -> Any:
    return getattr(settings, name, default)


def _environment(language: Language) -> dict[str, str]:
    if language == "python":
        return {
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "PYTHONIOENCODING": "utf-8",
        }
    return {"NODE_ENV": "production"}


def _output(result: sandbox.SandboxResult) -> dict[str, Any]:
    stdout = result.stdout.decode(errors="replace")
    return {
        "stdout": stdout,
        "stderr": result.stderr.decode(errors="replace"),
        "truncated": result.truncated,
        "exitCode": result.exit_code,
        "durationMs": result.duration_ms,
        "json": None if result.stdout_truncated else last_json_line(stdout),
    }


def last_json_line(stdout: str) -> Any:
    """The last non-empty line of ``stdout`` as JSON, or None when it is not JSON."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        return None
    try:
        return json.loads(lines[-1], parse_constant=_refuse)
    except ValueError:
        return None


def _refuse(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def _log(ctx: ExecutionContext, output: dict[str, Any], result: sandbox.SandboxResult) -> None:
    ended = f"killed ({result.killed})" if result.killed else f"exit code {result.exit_code}"
    truncated = ", output truncated" if result.truncated else ""
    ctx.log(f"{ended} after {result.duration_ms} ms{truncated}")
    for stream in ("stdout", "stderr"):
        if output[stream]:
            ctx.log(f"{stream}: {output[stream][-LOG_TAIL_CHARS:]}")


def failure_reason(
    result: sandbox.SandboxResult, limits: sandbox.Limits, language: Language
) -> str | None:
    """Why the run failed, in words for the execution's error; None when it succeeded."""
    seconds = f"{limits.wall_seconds:g}"
    if result.killed == "timeout":
        return f"the {language} code ran past its {seconds} s limit and was killed"
    if result.killed == "output":
        return (
            f"the {language} code wrote more than {limits.output_bytes} bytes of output "
            "and was killed"
        )
    if result.exit_code == 0:
        return None
    stderr = result.stderr.decode(errors="replace")
    tail = stderr_tail(stderr)
    limit = _limit_hit(result, stderr, limits)
    prefix = f"the {language} code {limit}: " if limit else f"the {language} code failed: "
    return f"{prefix}exit code {result.exit_code}" + (f"; stderr: {tail}" if tail else "")


def stderr_tail(stderr: str) -> str:
    """The end of stderr without the runtime's own stack frames and banner."""
    kept = [line for line in stderr.splitlines() if not RUNTIME_NOISE.match(line)]
    return "\n".join(kept).strip()[-STDERR_TAIL_CHARS:]


def _limit_hit(result: sandbox.SandboxResult, stderr: str, limits: sandbox.Limits) -> str | None:
    if result.signal == signal.SIGXCPU:
        return f"hit its CPU time limit ({limits.cpu_seconds} s)"
    if result.signal == signal.SIGXFSZ or any(m in stderr for m in DISK_MARKERS):
        return f"hit its disk limit ({limits.disk_bytes // sandbox.MiB} MB)"
    if any(marker in stderr for marker in MEMORY_MARKERS):
        return f"ran out of memory (limit {limits.memory_bytes // sandbox.MiB} MB)"
    return None
