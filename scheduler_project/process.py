"""Which process this is, read once from its command line: `celery beat` loads less."""

from __future__ import annotations

import sys
from pathlib import Path


def is_beat(argv: list[str]) -> bool:
    """``celery … beat`` (or ``python -m celery … beat``), not a worker with ``-B``, not a
    test run whose arguments happen to say "beat"."""
    if not argv:
        return False
    program = Path(argv[0])
    if program.name != "celery" and program.parent.name != "celery":
        return False
    return "beat" in argv[1:4] or argv[-1:] == ["beat"]


#: Beat sends messages and serves no page. It neither autodiscovers the admin's
#: ModelAdmins (their forms import every executor) nor imports the task modules (it
#: sends run messages by name), nor runs Django's system checks: at 100,000 schedules
#: the process holds 120 MiB instead of 142 (bench/RESULTS.md; the target is 150 MB).
BEAT = is_beat(sys.argv)
