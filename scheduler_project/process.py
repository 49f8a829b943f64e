"""Which process this is, read once from its command line: `celery beat` loads less."""

from __future__ import annotations

import sys
from pathlib import Path

#: celery's own options that take a value (``celery --help``), before its command
_VALUED = frozenset(
    {"-A", "--app", "-b", "--broker", "--result-backend", "--loader", "--config", "--workdir"}
)


def is_beat(argv: list[str]) -> bool:
    """``celery [options] beat …`` (or ``python -m celery …``): celery's command is the
    first word that is neither an option nor an option's value. Not a worker named or
    consuming "beat", not a worker with ``-B``, not a test run that mentions beat."""
    if not argv:
        return False
    program = Path(argv[0])
    if program.name != "celery" and program.parent.name != "celery":
        return False
    words = iter(argv[1:])
    for word in words:
        if word in _VALUED:
            next(words, None)
        elif not word.startswith("-"):
            return word == "beat"
    return False


#: Beat sends messages and serves no page. It neither autodiscovers the admin's
#: ModelAdmins (their forms import every executor) nor imports the task modules (it
#: sends run messages by name), nor runs Django's system checks: at 100,000 schedules
#: the process holds 120 MiB instead of 142 (bench/RESULTS.md; the target is 150 MB).
BEAT = is_beat(sys.argv)
