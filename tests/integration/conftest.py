from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.http_receiver import Receiver
from tests.integration.stack import Stack
from tests.services import require_postgres, require_redis

CREATE_TASKS = """
from datetime import timedelta
from django.contrib.auth import get_user_model
from django.utils import timezone
from tasks_app.services.definitions import task_create
owner, _ = get_user_model().objects.get_or_create(username="it")
result = []
for spec in SPECS:
    spec = dict(spec)
    if "in_seconds" in spec:
        spec["run_at"] = timezone.now() + timedelta(seconds=spec.pop("in_seconds"))
    result.append(str(task_create(owner=owner, **spec).id))
"""


def create_tasks(stack: Stack, *specs: dict[str, Any]) -> list[str]:
    return stack.orm(f"SPECS = {json.dumps(list(specs))}\n{CREATE_TASKS}")


def make_stack(mode: str, workdir: Path) -> Stack:
    if mode == "postgres-redis":
        require_postgres()
        require_redis()
    return Stack(mode, workdir)


@pytest.fixture(scope="module")
def http() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server
