"""`celery beat` loads only what it uses: no executor, no task module, no ModelAdmin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest

from scheduler_project.process import is_beat

CELERY = str(Path(sys.executable).parent / "celery")


@pytest.mark.parametrize(
    ("argv", "beat"),
    [
        ([CELERY, "-A", "scheduler_project", "beat", "--loglevel=INFO"], True),
        (["/usr/lib/python3/site-packages/celery/__main__.py", "-A", "x", "beat"], True),
        ([CELERY, "--app=scheduler_project", "beat"], True),
        ([CELERY, "--workdir", "/app", "-A", "scheduler_project", "beat", "-l", "INFO"], True),
        ([CELERY, "-q", "-A", "scheduler_project", "beat", "--detach"], True),
        ([CELERY, "-A", "scheduler_project", "worker", "-n", "beat"], False),
        ([CELERY, "-A", "scheduler_project", "worker", "-Q", "celery", "-n", "beat"], False),
        ([CELERY, "-A", "scheduler_project", "inspect", "ping", "-d", "beat"], False),
        ([CELERY, "-A", "scheduler_project", "worker", "-B"], False),
        ([CELERY, "-A", "scheduler_project", "flower"], False),
        (["/usr/bin/pytest", "-k", "beat"], False),
        (["manage.py", "beat"], False),
        ([], False),
    ],
)
def test_only_celery_beat_is_the_beat_process(argv: list[str], beat: bool) -> None:
    assert is_beat(argv) is beat


PROBE = """
import json, sys
sys.argv = [sys.argv[1], "-A", "scheduler_project", sys.argv[2]]
from scheduler_project.celery import app
app.loader.init_worker()  # what `celery beat` and `celery worker` do first (django.setup)
import tasks_app.beat
from django.apps import apps
from django.contrib import admin
print(json.dumps({
    "executors": sorted(m for m in sys.modules if m.split(".")[0] == "executors"),
    "pydantic": "pydantic" in sys.modules,
    "task_modules": "tasks_app.tasks" in sys.modules,
    "run_task": "tasks_app.run_task" in app.tasks,
    "admin": type(apps.get_app_config("admin")).__name__,
    "model_admins": len(admin.site._registry),
}))
"""


def loaded(command: str, tmp_path: Path) -> dict:
    env = {**os.environ, "SCHEDULER_DATA_DIR": str(tmp_path), "CELERY_BROKER_URL": "memory://"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, CELERY, command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_beat_loads_no_executor_no_task_module_and_no_model_admin(tmp_path: Path) -> None:
    beat = loaded("beat", tmp_path)
    assert beat == {
        "executors": [],
        "pydantic": False,
        "task_modules": False,
        "run_task": False,
        "admin": "SimpleAdminConfig",
        "model_admins": 0,
    }
    # The same probe as a worker sees them all: what beat leaves out is really left out.
    worker = loaded("worker", tmp_path)
    assert "executors.base" in worker["executors"]
    assert worker["pydantic"] and worker["task_modules"] and worker["run_task"]
    assert worker["admin"] == "AdminConfig" and worker["model_admins"] > 0


class _Node:
    me: object = None


def test_a_prefork_worker_freezes_what_it_loaded_before_each_fork() -> None:
    """Celery's prefork pool sends worker_before_create_process in the worker before each
    pool process is forked: what is loaded by then is collected once and frozen."""
    import gc

    from celery import signals

    from tasks_app import tasks

    gc.unfreeze()
    try:
        assert gc.get_freeze_count() == 0
        signals.worker_before_create_process.send(sender=None)
        first = gc.get_freeze_count()
        assert first > 10_000  # Django, the executors, this test run
        assert tasks._freeze_before_fork in [
            receiver() for _, receiver in signals.worker_before_create_process.receivers
        ]
        # Garbage frozen with the first is collected before the next pool process.
        node = _Node()
        node.me = node  # a cycle: only the cyclic collector frees it
        gone = weakref.ref(node)
        gc.freeze()
        del node
        gc.collect()
        assert gone() is not None  # frozen: out of the collector's sight
        signals.worker_before_create_process.send(sender=None)  # the next pool process
        assert gone() is None
    finally:
        gc.unfreeze()
