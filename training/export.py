"""Logged turns as chat-format records, exactly as they were served (and as training would see them)."""

from __future__ import annotations

from collections.abc import Iterator

from conversations.log import ConversationLog
from training.dataset import turn_to_chat
from training.pii import Scrubber


def export_turns(
    log: ConversationLog,
    *,
    adapter: str | None = None,
    rating: str | None = None,
    since: str | None = None,
    until: str | None = None,
    corrected_only: bool = False,
    include_sources: bool = True,
    scrub: bool = True,
) -> Iterator[dict]:
    """``{"messages": [...], "metadata": {...}}`` per turn; the answer is the correction when there is one."""
    scrubber = Scrubber()
    for turn in log.turns(adapter=adapter, rating=rating, since=since, until=until, corrected_only=corrected_only):
        chat = turn_to_chat(turn, include_sources)
        yield {
            "messages": scrubber.chat(chat) if scrub else chat,
            "metadata": {
                "message_id": turn.message_id,
                "conversation_id": turn.conversation_id,
                "adapter": turn.adapter,
                "adapter_version": turn.adapter_version,
                "rating": turn.rating,
                "corrected": turn.corrected,
                "checks": turn.checks["action"] if turn.checks else None,
                "created_at": turn.created_at,
            },
        }
