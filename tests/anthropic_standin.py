"""A stand-in for Claude's Messages API: the real anthropic SDK, pointed by
ANTHROPIC_BASE_URL at the loopback receiver, gets these answers and records its requests."""

from __future__ import annotations

from typing import Any

import pytest

from tests.http_receiver import Receiver, Reply

PATH = "/v1/messages"


def message(text: str, *, input_tokens: int = 42, output_tokens: int = 7) -> dict[str, Any]:
    """A Messages API answer with one text block."""
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-test-1",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


def error(kind: str, text: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": text}}


def point_sdk_at(receiver: Receiver, monkeypatch: pytest.MonkeyPatch, *replies: Reply) -> Receiver:
    """Credentials and base URL for the SDK, and the replies the stand-in gives."""
    monkeypatch.setenv("ANTHROPIC_BASE_URL", receiver.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-key")
    monkeypatch.delenv("SCHEDULER_AI_MODEL", raising=False)
    receiver.reply(PATH, *(replies or (Reply(body=message("Looks fine.")),)))
    return receiver


def no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
