"""Test set-up: the unit suite runs on PostgreSQL when it answers (always in CI) and on
the embedded SQLite otherwise; integration tests start their own stacks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.broker import memory_broker  # noqa: F401 - a fixture for every test module
from tests.http_receiver import Receiver
from tests.services import CI, POSTGRES, reachable


@pytest.fixture(scope="session")
def django_db_modify_db_settings() -> None:
    from django.conf import settings
    from django.db import connections

    if os.environ.get("SCHEDULER_TEST_DATABASE") == "sqlite":
        return
    if not (CI or reachable(POSTGRES)):
        return
    default = settings.DATABASES["default"]
    default.clear()
    default.update(
        {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "scheduler",
            "USER": "postgres",
            "HOST": POSTGRES[0],
            "PORT": POSTGRES[1],
            "PASSWORD": "",
            "CONN_MAX_AGE": 0,
            "CONN_HEALTH_CHECKS": False,
            "OPTIONS": {},
            "ATOMIC_REQUESTS": False,
            "AUTOCOMMIT": True,
            "TIME_ZONE": None,
            "TEST": {
                "NAME": f"test_scheduler_{os.getpid()}",
                "CHARSET": None,
                "COLLATION": None,
                "MIGRATE": True,
                "MIRROR": None,
            },
        }
    )
    connections.close_all()
    try:
        del connections["default"]
    except (AttributeError, KeyError):
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


@pytest.fixture
def egress_allow_loopback(settings: Any) -> None:
    settings.SCHEDULER_EGRESS_ALLOW = ["127.0.0.1"]


@pytest.fixture
def user(django_user_model: Any) -> Any:
    """An owner without a password hash (hashing costs a quarter second per test)."""
    return django_user_model.objects.create(username="alice")


def pytest_report_header(config: Any) -> str:
    wanted = os.environ.get("SCHEDULER_TEST_DATABASE")
    if wanted == "sqlite" or not (CI or reachable(POSTGRES)):
        return "unit-test database: sqlite"
    return "unit-test database: postgresql"


@pytest.fixture(autouse=True)
def _fresh_cache(settings: Any) -> None:
    """Throttle counters live in the cache: every test starts with none, in a cache of
    its own process (the embedded default is a file cache other test runs may share)."""
    from django.core.cache import cache

    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": f"tests-{os.getpid()}",
        }
    }
    cache.clear()
