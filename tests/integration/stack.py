"""A whole system started as real processes (web, worker, beat, flower), on the embedded
default (SQLite + filesystem transport) or on PostgreSQL + Redis."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.services import POSTGRES_URL, REDIS_URL

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RESULT_MARK = "@@RESULT@@"

# Short limits so that a lost worker is noticed within seconds, not minutes.
FAST_RECOVERY = {
    "SCHEDULER_TASK_TIME_LIMIT": "20",
    "SCHEDULER_LEASE_GRACE": "5",
    "SCHEDULER_RECOVERY_INTERVAL": "3",
    "SCHEDULER_REQUEUE_AFTER": "15",
    "CELERY_VISIBILITY_TIMEOUT": "120",
    "SCHEDULER_EGRESS_ALLOW": "127.0.0.1",
}


_STACK_COUNT = itertools.count(int(uuid.uuid4().int % 15))


def redis_db_number() -> int:
    """A Redis database of its own for each stack: numbers 1-15, split between the
    pytest-xdist workers (gw0 takes odd ones, gw1 even ones) so two stacks running at once
    never share (and FLUSHDB) a queue."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker.removeprefix("gw") or 0) if worker.startswith("gw") else 0
    workers = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")), 1)
    choices = [n for n in range(1, 16) if (n - 1) % workers == index % workers]
    return choices[next(_STACK_COUNT) % len(choices)]  # stacks alive together differ


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def procfile_commands() -> dict[str, str]:
    """The README run command's processes (Procfile), as shell command lines."""
    commands = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            commands[name.strip()] = command.strip()
    return commands


def compose_services() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]


class Stack:
    def __init__(
        self,
        mode: str,
        workdir: Path,
        extra_env: Mapping[str, str] | None = None,
        *,
        postgres_url: str = POSTGRES_URL,
        redis_url: str = REDIS_URL,
    ) -> None:
        self.postgres_url, self.redis_url = postgres_url, redis_url
        self.mode = mode
        self.workdir = workdir
        self.data_dir = workdir / "var"
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.web_port = free_port()
        self.flower_port = free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DATABASE_", "CELERY_", "SCHEDULER_", "DJANGO_"))
        }
        env.update(FAST_RECOVERY)
        env.update(
            {
                "SCHEDULER_DATA_DIR": str(self.data_dir),
                "PYTHONUNBUFFERED": "1",
                "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
                "WEB_PORT": str(self.web_port),
                "FLOWER_PORT": str(self.flower_port),
                "WORKER_CONCURRENCY": "2",
            }
        )
        # Last, so that a test can point the processes at its stand-ins (SMTP, Claude).
        env.update(extra_env or {})
        self.db_name = None
        if mode == "postgres-redis":
            self.db_name = f"it_{uuid.uuid4().hex[:12]}"
            self.redis_db = redis_db_number()
            env["DATABASE_URL"] = f"{postgres_url}/{self.db_name}"
            env["CELERY_BROKER_URL"] = f"{redis_url}/{self.redis_db}"
            self._admin_sql(f'CREATE DATABASE "{self.db_name}"')
            self._redis("FLUSHDB")
        self.env = env

    # -- set-up ----------------------------------------------------------------------
    def _admin_sql(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"{self.postgres_url}/postgres", autocommit=True) as conn:
            conn.execute(sql)

    def _redis(self, *command: str) -> None:
        import redis

        redis.Redis.from_url(f"{self.redis_url}/{self.redis_db}").execute_command(*command)

    def manage(self, *args: str, timeout: float = 180) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
            )
        return done.stdout

    def orm(self, code: str) -> Any:
        """Run Python in the stack's Django (services, ORM); return its ``result``."""
        script = (
            f"{code}\nimport json as _j\nprint({RESULT_MARK!r} + _j.dumps(result, default=str))"
        )
        out = self.manage("shell", "--no-imports", "-c", script)
        return json.loads(out.split(RESULT_MARK, 1)[1])

    def id_param(self, value: str) -> str:
        """A UUID as this database stores it (SQLite: 32 hex digits)."""
        return uuid.UUID(value).hex if self.db_name is None else value

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Read the stack's database directly (qmark placeholders)."""
        if self.db_name is None:
            with sqlite3.connect(self.data_dir / "scheduler.sqlite3", timeout=30) as conn:
                return conn.execute(sql, params).fetchall()
        import psycopg

        with psycopg.connect(f"{self.postgres_url}/{self.db_name}") as conn:
            return conn.execute(sql.replace("?", "%s"), params).fetchall()

    # -- processes -------------------------------------------------------------------
    def start(self, name: str, command: str | list[str]) -> subprocess.Popen:
        log = self.workdir / f"{name}.log"
        self.logs[name] = log
        # `exec` so that the process we hold is the command itself, not a shell around it.
        argv = ["sh", "-c", f"exec {command}"] if isinstance(command, str) else command
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=self.env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[name] = process
        return process

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(name)
        _signal_group(process.pid, sig)
        process.wait(timeout=30)

    def children(self, name: str) -> list[int]:
        """PIDs of the processes started by ``name``'s main process (its pool)."""
        main = self.processes[name].pid
        out = subprocess.run(["pgrep", "-P", str(main)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def children_connected_to(self, name: str, port: int) -> list[int]:
        """PIDs of ``name``'s pool processes with a TCP connection open to ``port``."""
        return [pid for pid in self.children(name) if connected_to(pid, port)]

    def stop_process(self, name: str, timeout: float = 15) -> None:
        """SIGTERM the main process (as Docker or systemd do), wait, then SIGKILL whatever
        is left in its process group."""
        process = self.processes.pop(name)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def lose_broker_messages(self) -> None:
        """What a broker restart without persistence does: every message is gone."""
        if self.db_name is None:
            for message in (self.data_dir / "broker" / "queue").iterdir():
                message.unlink()
        else:
            self._redis("FLUSHDB")

    def stop(self) -> None:
        for name in list(self.processes):
            self.stop_process(name)
        if self.db_name:
            self._redis("FLUSHDB")
            self._admin_sql(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    def log_tail(self, lines: int = 60) -> str:
        parts = []
        for name, path in self.logs.items():
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
            parts.append(f"----- {name} -----\n" + "\n".join(text))
        return "\n".join(parts)

    def wait_http(self, url: str, timeout: float = 30) -> int:
        import requests

        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                return requests.get(url, timeout=3).status_code
            except requests.RequestException as exc:
                last = exc
                time.sleep(0.3)
        raise AssertionError(f"{url} did not answer within {timeout}s: {last}\n{self.log_tail()}")

    def compose_argv(self, service: str) -> list[str]:
        """A compose service's command, bound to this stack's local ports."""
        argv = [str(a) for a in compose_services()[service]["command"]]
        return [
            a.replace("0.0.0.0:8000", f"127.0.0.1:{self.web_port}")
            .replace("--port=5555", f"--port={self.flower_port}")
            .replace("/data/", f"{self.data_dir}/")
            for a in argv
        ]


def wait_until(predicate: Any, timeout: float, interval: float = 0.5, message: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message or f"condition not met within {timeout}s")
        time.sleep(interval)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def connected_to(pid: int, port: int) -> bool:
    """Whether process ``pid`` has a TCP (IPv4) connection to 127.0.0.1:``port``."""
    suffix = f":{port:04X}"
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
        lines = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(
        (fields := line.split())[2].endswith(suffix) and fields[9] in inodes for line in lines
    )
