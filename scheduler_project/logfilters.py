"""Logging filters: secrets never reach a log line (the guide's ``?secret=`` included)."""

from __future__ import annotations

import logging
import re

SECRET_PARAM = re.compile(
    r"((?:^|[?&;])(?:secret|token|api_key|apikey|key|signature)=)[^&\s\"']*", re.I
)


def redact(text: str) -> str:
    return SECRET_PARAM.sub(r"\1[redacted]", text)


class RedactSecrets(logging.Filter):
    """Rewrites query-string secrets in a record's message and arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True
