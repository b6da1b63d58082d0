"""The data of one chat turn, from the request to the result the API, the UI and the CLI serialize."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from adapters.manifest import Manifest
from bot.router import Route
from conversations.log import MAX_ID_CHARS
from core.errors import InvalidRequestError
from engine.sampling import GenerationOptions
from knowledge.grounding import GroundingReport
from knowledge.passage import Passage

DEFAULT_NO_ANSWER = (
    "I could not find anything about this in the knowledge base, so I cannot answer it reliably."
)
STAGES = ("route", "retrieve", "prompt", "generate", "log")


@dataclass
class TurnRequest:
    """What a user asks in one turn, from any edge (HTTP, UI, CLI)."""

    message: str = field(metadata={"help": "The user's new message."})
    adapter: str = field(default="auto", metadata={"help": "'auto' routes, 'base' uses no adapter, a name forces it."})
    conversation_id: str | None = field(default=None, metadata={"help": "Conversation to continue; None starts one."})
    history: list[dict] | None = field(
        default=None,
        metadata={"help": "Earlier {role, content} messages; None takes them from the log of conversation_id."},
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "Caller's system prompt; used only when the answerer has none of its own."}
    )
    options: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Generation overrides (max_new_tokens, temperature, top_p, stop, seed)."}
    )

    def __post_init__(self) -> None:
        if not isinstance(self.message, str) or not self.message.strip():
            raise InvalidRequestError("the message is empty")
        if not isinstance(self.adapter, str) or not self.adapter.strip():
            raise InvalidRequestError("name an adapter, 'auto' or 'base'")
        if self.conversation_id is not None and not 0 < len(self.conversation_id.strip()) <= MAX_ID_CHARS:
            raise InvalidRequestError(f"invalid conversation id: use 1-{MAX_ID_CHARS} characters")


@dataclass
class PreparedTurn:
    """A turn that passed every check: its route, sources, prompt and options are fixed."""

    request: TurnRequest
    manifest: Manifest | None
    route: Route
    passages: list[Passage]
    messages: list[dict]
    prompt_ids: list[int] = field(metadata={"help": "The rendered prompt's tokens: counted once, generated from as is."})
    options: GenerationOptions
    no_answer: str | None = field(default=None, metadata={"help": "Set when the reply is the adapter's no-answer text."})
    started: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict, metadata={"help": "Seconds spent per stage."})
    cancel: threading.Event = field(
        default_factory=threading.Event, metadata={"help": "Set when the caller went away: the generation stops."}
    )

    @property
    def adapter(self) -> str | None:
        return self.manifest.name if self.manifest else None

    @property
    def adapter_version(self) -> int | None:
        return self.manifest.version if self.manifest else None

    @property
    def confidence(self) -> float:
        return round(float(self.route.confidence), 4)

    @property
    def system_prompt(self) -> str:
        return self.messages[0]["content"]

    @property
    def refusal(self) -> str:
        """The answerer's own words for "the sources do not answer this" (support hands off, legal declines)."""
        text = self.manifest.no_answer if self.manifest and self.manifest.no_answer else DEFAULT_NO_ANSWER
        return text.strip()

    def sources(self) -> list[dict]:
        """The passages as shown to users; ``number`` is the [n] the answer cites."""
        return [source_dict(number, p) for number, p in enumerate(self.passages, start=1)]


@dataclass
class TurnResult:
    answer: str
    adapter: str | None
    adapter_version: int | None
    confidence: float
    route_reason: str = field(metadata={"help": "routed, follow-up, below-threshold, no-adapters or requested."})
    sources: list[dict]
    conversation_id: str
    message_id: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    timings_ms: dict[str, float] = field(metadata={"help": "Milliseconds per stage, plus first_token and total."})
    route: Route = field(metadata={"help": "The routing decision, with the retrieval signal that took part in it."})
    checks: GroundingReport = field(metadata={"help": "How the answer fared against its sources."})

    def to_dict(self) -> dict[str, Any]:
        """The shape ``switchboard chat --json`` promises."""
        return {
            "answer": self.answer,
            "adapter": self.adapter,
            "adapter_version": self.adapter_version,
            "confidence": self.confidence,
            "sources": self.sources,
            "conversation_id": self.conversation_id,
            "message_id": self.message_id,
        }


def source_dict(number: int, passage: Passage) -> dict[str, Any]:
    return {
        "number": number,
        "id": passage.id,
        "source": passage.source,
        "section": passage.section,
        "collection": passage.collection,
        "text": passage.text,
        "score": round(float(passage.score), 4),
    }
