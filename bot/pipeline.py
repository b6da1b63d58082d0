"""One chat turn: route → retrieve → prompt → generate → check → log.

The turn is split in two so the edges can answer errors properly:
:meth:`Pipeline.prepare` does everything that can reject a request (unknown
adapter, empty message, a message over the context window) before a single
byte is streamed, and :meth:`Pipeline.stream` generates, checks and logs it
(:class:`bot.turn_stream.TurnStream`). Streamed or not, every turn takes that
one path; :meth:`Pipeline.answer` is the same stream read to its end.

When the answering adapter has knowledge collections and retrieval finds
nothing relevant, the reply is the adapter's own ``no_answer`` text (support
hands off to a human, legal says the statutes do not cover it) instead of a
generation: a small model asked without sources invents facts.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from adapters.manifest import Manifest
from bot.dispatch import Dispatcher
from bot.router import Route
from bot.turn import STAGES, PreparedTurn, TurnRequest, TurnResult
from bot.turn_stream import TurnStream
from conversations.log import ConversationLog
from core.errors import InvalidRequestError, validation_message
from core.settings import Settings
from engine.decoding import Generation, GenerationRequest
from engine.embedded import Engine
from engine.sampling import GenerationOptions
from engine.scheduler import Scheduler, Ticket
from knowledge.grounding import GroundingReport
from knowledge.passage import Passage
from knowledge.prompt import build_messages

REMEMBERED_CONVERSATIONS = 10_000
HISTORY_MESSAGES = 20  # earlier messages of a logged conversation offered to the prompt, before trimming

TextCallback = Callable[[str], None]


class Pipeline:
    """Answers chat turns: the dispatcher routes and retrieves, the scheduler generates, the log keeps them."""

    def __init__(
        self, dispatcher: Dispatcher, engine: Engine, scheduler: Scheduler, log: ConversationLog, settings: Settings
    ) -> None:
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
        """One turn read to its end in the caller's thread; ``on_text`` receives the answer as it is released."""
        stream = self.stream(self.prepare(request))
        for piece in stream:
            if on_text is not None:
                on_text(piece)
        return stream.result

    def prepare(self, request: TurnRequest) -> PreparedTurn:
        """Route, retrieve and build the prompt; raises before anything is generated."""
        started = time.perf_counter()
        dispatch = self.dispatcher.dispatch(request.message, request.adapter, self._previous_adapter(request))
        timings = dict(dispatch.timings)
        mark = time.perf_counter()
        manifest = dispatch.manifest
        options = self._options(manifest, request.options)
        system = (manifest.system_prompt if manifest and manifest.system_prompt else request.system_prompt) or None
        history = self._history(request)
        messages, passages, prompt_ids = self._fit(request.message, dispatch.passages, system, history, options)
        timings["prompt"] = time.perf_counter() - mark
        turn = PreparedTurn(
            request, manifest, dispatch.route, passages, messages, prompt_ids, options, started=started, timings=timings
        )
        if dispatch.collections and not passages:
            turn.no_answer = turn.refusal
        return turn

    def stream(self, turn: PreparedTurn) -> TurnStream:
        """The turn's released text, read with ``for`` or ``async for``; the finished turn is ``.result`` afterwards."""
        return TurnStream(self, turn)

    def submit(self, turn: PreparedTurn) -> Ticket:
        """Hand the turn's prompt to the scheduler, which batches it with every other caller's."""
        key = self.engine.ensure(turn.manifest)
        return self.scheduler.submit(
            GenerationRequest(turn.messages, key, turn.options, cancel=turn.cancel, prompt_ids=turn.prompt_ids)
        )

    def conclude(self, turn: PreparedTurn, generation: Generation, report: GroundingReport, first_text: float | None) -> TurnResult:
        """Log the turn in one transaction and describe it; ``first_text``: when its first text was released."""
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
        timings_ms["first_token"] = round(((first_text or time.perf_counter()) - turn.started) * 1000, 2)
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
    ) -> tuple[list[dict], list[Passage], list[int]]:
        """The prompt, trimmed to leave room for the answer: oldest history first, then the last sources.

        The first source always stays (it is what a grounded answer rests on);
        a message that cannot fit even alone is the caller's error. The tokens
        of the last rendering are the prompt the engine generates from: the
        prompt is rendered and measured against the window here only.
        """
        engine = self.engine
        window = engine.context_window
        room = window - min(options.max_new_tokens, window // 2)
        history = list(history)
        passages = list(passages)
        tokens = len(engine.render(build_messages(message, passages, system, history)))
        if tokens > room and history:
            history = self._drop_oldest(message, passages, system, history, tokens, tokens - room)
        while True:
            messages = build_messages(message, passages, system, history)
            ids = engine.render(messages)
            tokens = len(ids)
            if tokens <= room:
                return messages, passages, ids
            if history:  # the estimate fell a little short: one more pair
                history = history[2:] if len(history) > 1 else []
            elif len(passages) > 1:
                passages.pop()
            elif tokens < window:
                return messages, passages, ids  # the engine shortens the answer to what fits
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
        bare = len(engine.render(build_messages(message, passages, system, [])))
        contents = [str(turn.get("content") or "") for turn in history]
        lengths = [len(ids) for ids in engine.tokenizer(contents, add_special_tokens=False)["input_ids"]]
        markup = max(0.0, (tokens - bare - sum(lengths)) / len(history))
        for index, covered in enumerate(itertools.accumulate(n + markup for n in lengths)):
            if index % 2 == 1 and covered >= excess:  # whole pairs only, oldest first
                return history[index + 1 :]
        return []
