"""Logging filters: secrets never reach a log line (the guide's ``?secret=`` included)."""

from __future__ import annotations

import logging
import re

SECRET_PARAM = re.compile(
    r"((?:^|[?&;]\s*)(?:secret|token|api_key|apikey|key|signature)=)[^&\s\"']*", re.I
)


def redact(text: str) -> str:
    return SECRET_PARAM.sub(r"\1[redacted]", text)


class RedactSecrets(logging.Filter):
    """Rewrites query-string secrets in the record's final text (whatever its arguments:
    a tuple, or a mapping as in gunicorn's access records)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True  # a malformed record: logging reports it as it would have
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True
