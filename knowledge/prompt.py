"""The one prompt layout, shared by serving and training.

Adapters are trained on exactly the messages the pipeline serves (system
prompt, numbered sources, history, question), so an adapter learns to quote
the sources it is given instead of memorising facts.
"""

from __future__ import annotations

from collections.abc import Sequence

from knowledge.passage import Passage

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly and accurately."
GROUNDING_RULES = (
    "Answer only from the numbered sources in the user's message when they are given, "
    "and cite them as [1], [2]. If the sources do not contain the answer, say so."
)


def format_sources(passages: Sequence[Passage]) -> str:
    lines = []
    for number, passage in enumerate(passages, start=1):
        where = f" ({passage.section})" if passage.section else ""
        lines.append(f"[{number}] {passage.source}{where}: {passage.text.strip()}")
    return "\n".join(lines)


def user_turn(message: str, passages: Sequence[Passage]) -> str:
    """The last user turn: the sources first, then the question, so a small model reads them just before it answers."""
    if not passages:
        return message
    return f"Sources:\n{format_sources(passages)}\n\nQuestion: {message}"


def build_messages(
    message: str,
    passages: Sequence[Passage] = (),
    system_prompt: str | None = None,
    history: Sequence[dict] = (),
) -> list[dict]:
    """Chat messages for one turn; ``history`` holds earlier ``{"role", "content"}`` turns, oldest first."""
    system = (system_prompt or DEFAULT_SYSTEM_PROMPT).strip()
    if passages:
        system = f"{system}\n\n{GROUNDING_RULES}"
    messages = [{"role": "system", "content": system}]
    messages.extend({"role": turn["role"], "content": turn["content"]} for turn in history)
    messages.append({"role": "user", "content": user_turn(message, passages)})
    return messages
