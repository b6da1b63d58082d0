"""One chat turn: route → retrieve → prompt → generate (streamed) → log.

The pipeline is split in two so the edges can answer errors properly:
:meth:`Pipeline.prepare` does everything that can reject a request (unknown
adapter, empty message, a message over the context window) before a single
byte is streamed, and :meth:`Pipeline.complete` generates and logs. Every
generation goes through :meth:`Pipeline._generate`, the one place that hands
it to the batching scheduler.

When the answering adapter has knowledge collections and retrieval finds
nothing relevant, the reply is the adapter's own ``no_answer`` text (support
hands off to a human, legal says the statutes do not cover it) instead of a
generation: a small model asked without sources invents facts.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from adapters.manifest import Manifest
from bot.dispatch import Dispatcher
from bot.router import Route
from conversations.log import MAX_ID_CHARS, ConversationLog
from core.errors import InvalidRequestError, RequestCancelledError, validation_message
from core.settings import Settings
from engine.decoding import Generation, GenerationRequest
from engine.embedded import Engine
from engine.sampling import GenerationOptions
from engine.scheduler import Scheduler
from knowledge.grounding import GroundingReport, ground_answer
from knowledge.grounding.script import chinese_script, in_script
from knowledge.passage import Passage
from knowledge.prompt import build_messages

REMEMBERED_CONVERSATIONS = 10_000
HISTORY_MESSAGES = 20  # earlier messages of a logged conversation offered to the prompt, before trimming
DEFAULT_NO_ANSWER = (
    "I could not find anything about this in the knowledge base, so I cannot answer it reliably."
)
STAGES = ("route", "retrieve", "prompt", "generate", "log")

TextCallback = Callable[[str], None]


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


class Pipeline:
    """Answers chat turns: the dispatcher routes and retrieves, the scheduler generates, the log keeps them."""

    def __init__(self, dispatcher: Dispatcher, engine: Engine, scheduler: Scheduler, log: ConversationLog, settings: Settings) -> None:
        self.dispatcher = dispatcher
        self.engine = engine
        self.scheduler = scheduler
        self.log = log
        self.settings = settings
        # The router's follow-up rule needs each conversation's last adapter; the log does not index it,
        # so the pipeline remembers it for the conversations it served (recent ones, bounded).
        self._last_adapter: OrderedDict[str, str | None] = OrderedDict()
        self._lock = threading.Lock()

    # ---- the turn

    def answer(self, request: TurnRequest, on_text: TextCallback | None = None) -> TurnResult:
        """Prepare and complete one turn; ``on_text`` receives the answer as it is generated."""
        return self.complete(self.prepare(request), on_text)

    def prepare(self, request: TurnRequest) -> PreparedTurn:
        """Route, retrieve and build the prompt; raises before anything is generated."""
        started = time.perf_counter()
        timings: dict[str, float] = {}

        dispatch = self.dispatcher.dispatch(request.message, request.adapter, self._previous_adapter(request))
        manifest, route, passages = dispatch.manifest, dispatch.route, dispatch.passages
        timings.update(dispatch.timings)

        mark = time.perf_counter()
        options = self._options(manifest, request.options)
        system = (manifest.system_prompt if manifest and manifest.system_prompt else request.system_prompt) or None
        history = self._history(request)
        messages, passages = self._fit(request.message, passages, system, history, options)
        timings["prompt"] = time.perf_counter() - mark
        turn = PreparedTurn(request, manifest, route, passages, messages, options, None, started, timings)
        if dispatch.collections and not passages:
            turn.no_answer = turn.refusal
        return turn

    def complete(self, turn: PreparedTurn, on_text: TextCallback | None = None) -> TurnResult:
        """Generate (or give the no-answer reply), then log the turn."""
        mark = time.perf_counter()
        first_token: list[float] = []

        def forward(piece: str) -> None:
            if not first_token:
                first_token.append(time.perf_counter())
            if on_text is not None:
                on_text(piece)

        config = self.settings.grounding
        if turn.no_answer is not None:
            forward(turn.no_answer)
            generation = Generation(text=turn.no_answer, prompt_tokens=0, completion_tokens=0, finish_reason="stop")
            report = GroundingReport(turn.no_answer, turn.no_answer, "unchecked")
        else:
            # An answer with sources is held back until its check: nobody sees a fact before it is verified.
            checked = turn.passages if config.check_citations or config.check_facts else []
            script = chinese_script(turn.request.message) if config.keep_script else None
            generation = self._generate(turn, (lambda piece: None) if checked else lambda p: forward(in_script(p, script)))
            if checked:
                report = ground_answer(generation.text, checked, turn.request.message, config, turn.refusal)
                forward(report.answer)
            else:  # streamed as generated, in the user's script: nothing to check it against
                report = GroundingReport(in_script(generation.text, script), generation.text, "unchecked")
        turn.timings["generate"] = time.perf_counter() - mark
        latency = time.perf_counter() - turn.started

        mark = time.perf_counter()
        sources = turn.sources()
        ids = self.log.log_turn(
            turn.request.conversation_id,
            turn.request.message,
            report.answer,
            adapter=turn.adapter,
            adapter_version=turn.adapter_version,
            confidence=turn.confidence,
            sources=sources,
            latency_ms=round(latency * 1000, 1),
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            system_prompt=turn.system_prompt,
            route=turn.route.to_dict(),
            checks=report.to_dict(),
        )
        turn.timings["log"] = time.perf_counter() - mark
        self._remember(ids.conversation_id, turn.adapter)

        timings_ms = {stage: round(turn.timings.get(stage, 0.0) * 1000, 2) for stage in STAGES}
        timings_ms["first_token"] = round(((first_token[0] if first_token else time.perf_counter()) - turn.started) * 1000, 2)
        timings_ms["total"] = round((time.perf_counter() - turn.started) * 1000, 2)
        return TurnResult(
            answer=report.answer,
            adapter=turn.adapter,
            adapter_version=turn.adapter_version,
            confidence=turn.confidence,
            route_reason=turn.route.reason,
            sources=sources,
            conversation_id=ids.conversation_id,
            message_id=ids.message_id,
            finish_reason=generation.finish_reason,
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            timings_ms=timings_ms,
            route=turn.route,
            checks=report,
        )

    def route(self, message: str, previous: str | None = None) -> Route:
        """Where ``message`` would go under 'auto', with every score (the UI's routing preview)."""
        return self.dispatcher.route(message, previous)

    def adapters(self) -> list[Manifest]:
        """The adapters a chat may name: every enabled one."""
        return [m for m in self.dispatcher.registry.list() if m.enabled]

    # ---- feedback: whoever received an answer may rate it (the feedback token proves it)

    def rate(
        self, message_id: str, rating: str, comment: str | None = None, correction: str | None = None, *, trusted: bool = True
    ) -> None:
        """Rate an answer; a correction is the answer it should have been. Untrusted ratings wait for an operator."""
        self.log.add_feedback(message_id, rating, comment=comment, correction=correction, trusted=trusted)

    def feedback_token(self, message_id: str) -> str:
        """The token that makes a rating of this answer trusted; given only to whoever received the answer."""
        return self.log.feedback_token(message_id)

    def check_feedback_token(self, message_id: str, token: str) -> bool:
        return self.log.check_feedback_token(message_id, token)

    def stream(self, turn: PreparedTurn) -> "TurnStream":
        """Iterate text pieces as they are generated; the finished turn is ``.result`` afterwards."""
        return TurnStream(self, turn)

    def _generate(self, turn: PreparedTurn, on_text: TextCallback) -> Generation:
        """The one generation call of serving: the scheduler batches it with every other caller's."""
        key = self.engine.ensure(turn.manifest)
        request = GenerationRequest(turn.messages, key, turn.options, on_text, cancel=turn.cancel)
        generation = self.scheduler.submit(request).result()
        if generation.finish_reason == "cancelled":  # nobody reads the answer: it is neither returned nor logged
            raise RequestCancelledError("the client went away; the generation was stopped")
        return generation

    # ---- stages

    def _previous_adapter(self, request: TurnRequest) -> str | None:
        """The adapter of the conversation's last turn, so a short follow-up ("and for tents?") stays with it."""
        if request.conversation_id is None:
            return None
        with self._lock:
            return self._last_adapter.get(request.conversation_id)

    def _remember(self, conversation_id: str, adapter: str | None) -> None:
        with self._lock:
            self._last_adapter[conversation_id] = adapter
            self._last_adapter.move_to_end(conversation_id)
            while len(self._last_adapter) > REMEMBERED_CONVERSATIONS:
                self._last_adapter.popitem(last=False)

    def _options(self, manifest: Manifest | None, overrides: dict[str, Any]) -> GenerationOptions:
        values = {**(manifest.generation if manifest else {}), **{k: v for k, v in overrides.items() if v is not None}}
        try:
            return self.engine.default_options(**values)
        except ValidationError as exc:
            template = "generation option '{field}': {problem}"
            raise InvalidRequestError(validation_message(exc, template, "generation option 'options': {problem}")) from None

    def _history(self, request: TurnRequest) -> list[dict]:
        if request.history is not None:
            return list(request.history)
        if request.conversation_id is None:
            return []
        return self.log.history(request.conversation_id, HISTORY_MESSAGES)

    def _fit(
        self,
        message: str,
        passages: list[Passage],
        system: str | None,
        history: list[dict],
        options: GenerationOptions,
    ) -> tuple[list[dict], list[Passage]]:
        """The prompt, trimmed to leave room for the answer: oldest history first, then the last sources.

        The first source always stays (it is what a grounded answer rests on);
        a message that cannot fit even alone is the caller's error.
        """
        engine = self.engine
        window = engine.context_window
        room = window - min(options.max_new_tokens, window // 2)
        history = list(history)
        passages = list(passages)
        tokens = engine.count_tokens(build_messages(message, passages, system, history))
        if tokens > room and history:
            history = self._drop_oldest(message, passages, system, history, tokens, tokens - room)
        while True:
            messages = build_messages(message, passages, system, history)
            tokens = engine.count_tokens(messages)
            if tokens <= room:
                return messages, passages
            if history:  # the estimate fell a little short: one more pair
                history = history[2:] if len(history) > 1 else []
            elif len(passages) > 1:
                passages.pop()
            elif tokens < window:
                return messages, passages  # the engine shortens the answer to what fits
            else:
                raise InvalidRequestError(
                    f"the message is too long: its prompt is {tokens} tokens and the model's context window is {window}"
                )

    def _drop_oldest(
        self, message: str, passages: list[Passage], system: str | None, history: list[dict], tokens: int, excess: int
    ) -> list[dict]:
        """History without the fewest oldest pairs whose tokens cover ``excess``, in one pass.

        Each message is tokenized once and the template's markup around it is spread evenly, from one
        rendering without history; re-rendering the prompt per dropped pair made trimming quadratic
        (3,200 messages took minutes). :meth:`_fit` verifies the result by rendering it once.
        """
        engine = self.engine
        bare = engine.count_tokens(build_messages(message, passages, system, []))
        contents = [str(turn.get("content") or "") for turn in history]
        lengths = [len(ids) for ids in engine.tokenizer(contents, add_special_tokens=False)["input_ids"]]
        markup = max(0.0, (tokens - bare - sum(lengths)) / len(history))
        for index, covered in enumerate(itertools.accumulate(n + markup for n in lengths)):
            if index % 2 == 1 and covered >= excess:  # whole pairs only, oldest first
                return history[index + 1 :]
        return []


class TurnStream:
    """Text pieces of one turn, generated in a worker thread; ``result`` is set once iteration ends.

    It can be iterated from a thread (``for``) or from an event loop
    (``async for``) without holding a worker thread while waiting. A consumer
    that stops early without :meth:`cancel` does not stop the turn: it still
    finishes and is logged. After :meth:`cancel` (an HTTP client that
    disconnected, a closed browser tab) its row leaves the batch within one step
    and the turn is not logged.
    """

    _DONE = object()

    def __init__(self, pipeline: Pipeline, turn: PreparedTurn) -> None:
        self.turn = turn
        self.result: TurnResult | None = None
        self._pieces: queue.Queue = queue.Queue()
        self._failure: BaseException | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._work, args=(pipeline,), daemon=True, name="turn")
        self._thread.start()

    def cancel(self) -> None:
        """The consumer went away: stop the generation before its next step (a finished turn is unaffected)."""
        self.turn.cancel.set()

    def _work(self, pipeline: Pipeline) -> None:
        try:
            self.result = pipeline.complete(self.turn, self._put)
        except BaseException as exc:  # re-raised in the consumer's thread
            self._failure = exc
        finally:
            self._put(self._DONE)

    def _put(self, item: object) -> None:
        self._pieces.put(item)
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # the consumer's loop has closed; nobody is listening
                pass

    def __iter__(self) -> Iterator[str]:
        while (piece := self._pieces.get()) is not self._DONE:
            yield piece
        if self._failure is not None:
            raise self._failure

    async def __aiter__(self) -> AsyncIterator[str]:
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            try:
                piece = self._pieces.get_nowait()
            except queue.Empty:
                await self._wake.wait()
                continue
            if piece is self._DONE:
                break
            yield piece
        if self._failure is not None:
            raise self._failure
