import os

import pytest
from django.db import connection

from tests.services import CI, POSTGRES, reachable


@pytest.mark.django_db
def test_unit_suite_runs_on_postgres_when_it_answers():
    wanted_sqlite = os.environ.get("SCHEDULER_TEST_DATABASE") == "sqlite"
    expected = "postgresql" if (CI or reachable(POSTGRES)) and not wanted_sqlite else "sqlite"
    assert connection.vendor == expected
