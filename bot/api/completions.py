"""A chat turn as OpenAI's chat-completion shapes, streamed or not, with Switchboard's ``switchboard`` extension.

Every key of a response is written here once: the answer body and the last
streamed chunk carry the same ``switchboard`` object, ``finish_reason`` and
``usage``, so a new field of a turn's result is added in :func:`switchboard`
and both paths have it.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from bot.turn import PreparedTurn, TurnResult


def switchboard(result: TurnResult, feedback_token: str | None) -> dict[str, Any]:
    """The ``switchboard`` object of a response: the CLI's fields, how the turn was routed and checked, its timings."""
    return {
        **result.to_dict(),
        "feedback_token": feedback_token,
        "route_reason": result.route_reason,
        "retrieval": {name: round(value, 4) for name, value in result.route.retrieval.items()},
        "checks": {"action": result.checks.action, "problems": len(result.checks.problems)},
        "timings_ms": result.timings_ms,
    }


def routed(turn: PreparedTurn) -> dict[str, Any]:
    """The first chunk's ``switchboard``: who answers and from which sources, known before the first token.

    The rest of :func:`switchboard` comes with the last chunk; ``message_id`` is None until the turn is logged.
    """
    return {
        "adapter": turn.adapter,
        "adapter_version": turn.adapter_version,
        "confidence": turn.confidence,
        "route_reason": turn.route.reason,
        "sources": turn.sources(),
        "conversation_id": turn.request.conversation_id,
        "message_id": None,
    }


def finish_reason(result: TurnResult) -> str:
    return "length" if result.finish_reason == "length" else "stop"


def usage(result: TurnResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


@dataclass(frozen=True)
class Completion:
    """One response's envelope: its body, or each of its chunks, carries the same id, time and model."""

    id: str
    created: int
    model: str

    @classmethod
    def of(cls, turn: PreparedTurn) -> "Completion":
        return cls(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), turn.adapter or "base")

    def body(self, result: TurnResult, feedback_token: str | None) -> dict[str, Any]:
        """The whole answer, not streamed."""
        message = {"role": "assistant", "content": result.answer}
        choice = {"index": 0, "message": message, "finish_reason": finish_reason(result)}
        return self._envelope("chat.completion", [choice], usage=usage(result), switchboard=switchboard(result, feedback_token))

    def first_chunk(self, turn: PreparedTurn) -> dict[str, Any]:
        return self.chunk({"role": "assistant", "content": ""}, switchboard=routed(turn))

    def chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        return self._envelope("chat.completion.chunk", [{"index": 0, "delta": delta, "finish_reason": finish}], **extra)

    def last_chunks(self, result: TurnResult, feedback_token: str | None, include_usage: bool) -> list[dict[str, Any]]:
        """The chunk that finishes the choice, then (when asked for) OpenAI's usage chunk with no choices."""
        chunks = [self.chunk({}, finish_reason(result), switchboard=switchboard(result, feedback_token))]
        if include_usage:
            chunks.append(self._envelope("chat.completion.chunk", [], usage=usage(result)))
        return chunks

    def _envelope(self, kind: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices, **extra}


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event; a dict is sent as JSON, a string (``[DONE]``) as it is."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"
