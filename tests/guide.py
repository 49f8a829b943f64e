"""Request bodies copied from the guide (../shared/seed/), shared by the tests that
replay them in-process and against the running stack."""

from __future__ import annotations

from typing import Any

GUIDE_CREATE: dict[str, Any] = {
    "userId": "user-123",
    "name": "Daily Report",
    "description": "Generate daily analytics report",
    "type": "recurring",
    "schedule": {"cron": "0 9 * * *", "timezone": "America/New_York"},
    "action": {
        "type": "ai-prompt",
        "prompt": "Generate a comprehensive daily analytics report...",
        "model": "claude-3-5-sonnet-20241022",
    },
    "retryPolicy": {"maxRetries": 3, "backoffMs": 60000},
    "notification": {"onSuccess": False, "onFailure": True, "channels": ["email"]},
}
