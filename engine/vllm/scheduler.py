"""Requests to a vLLM server, streamed on one event loop, with the embedded scheduler's tickets.

vLLM batches and queues on its side (continuous batching, mixed-adapter
kernels); here each request is one streamed ``/v1/completions`` call on an
event loop in a thread of its own, so no thread waits per request. A caller
gets the same :class:`engine.scheduler.Ticket` as from the embedded
scheduler. Cancelling a ticket (or setting its request's cancel event, as a
client that went away does) closes its connection, and vLLM aborts the
request.

A request for an adapter the server lost (it restarted) repairs the server's
adapters and is retried once; a server that does not answer fails the
request with :class:`core.errors.UnavailableError`, 503 with Retry-After at the
edge.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import httpx

from core.errors import BusyError, GenerationError, SwitchboardError, UnavailableError
from core.settings import SchedulerConfig
from engine.decoding import Generation, GenerationRequest
from engine.sampling import GREEDY_BELOW
from engine.scheduler import Ticket
from engine.vllm.client import AdapterNotLoadedError
from engine.vllm.engine import VLLMEngine

log = logging.getLogger(__name__)

CANCEL_POLL_S = 0.1  # how often a running request looks at its cancel event (the API polls a client every 0.25 s)
ANSWER_PENALTY = "answer_repetition_penalty"  # engine.vllm.answer_penalty.XARG (that module imports vLLM)
FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "cancelled"}


def completion_body(model: str, prompt_ids: list[int], request: GenerationRequest) -> dict:
    """The ``/v1/completions`` body that asks vLLM for what the embedded engine would generate."""
    options = request.options
    return {
        "model": model,
        "prompt": prompt_ids,
        "max_tokens": options.max_new_tokens,
        "temperature": 0.0 if options.temperature < GREEDY_BELOW else options.temperature,
        "top_p": options.top_p,
        "repetition_penalty": 1.0,  # vLLM's own would penalize the prompt too; see engine.vllm.answer_penalty
        "vllm_xargs": {ANSWER_PENALTY: options.repetition_penalty},
        "seed": options.seed,
        "stop": options.stop,
        "ignore_eos": options.ignore_eos,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
    }


class VLLMScheduler:
    def __init__(self, engine: VLLMEngine, config: SchedulerConfig) -> None:
        self.engine = engine
        self.config = config
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http: httpx.AsyncClient | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._closing: asyncio.Event | None = None
        self._running: set[Ticket] = set()

    # ---- lifecycle

    def start(self) -> VLLMScheduler:
        if self._thread is None or not self._thread.is_alive():
            self._ready.clear()
            self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), name="vllm-client", daemon=True)
            self._thread.start()
            self._ready.wait()
        return self

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._closing = asyncio.Event()
        async with self.engine.client.session() as http:
            self._http = http
            self._ready.set()
            await self._closing.wait()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()
        self._http = None

    def stop(self, timeout: float | None = 30.0) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._closing.set)
            self._thread.join(timeout)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._http is not None

    @property
    def queued(self) -> int:
        return 0  # the server queues; every request here is streaming or waiting for its first token there

    @property
    def running(self) -> int:
        return len(self._running)

    # ---- callers

    def submit(self, request: GenerationRequest) -> Ticket:
        """Start a request; raises BusyError when ``scheduler.max_queue`` requests are already in flight."""
        prompt_ids = self.engine.prompt_of(request)
        if not self.alive:
            raise BusyError("the vLLM client is not running", retry_after=5.0)
        if len(self._running) >= self.config.max_queue:
            raise BusyError(f"the server is busy: {len(self._running)} requests are in flight; retry later", retry_after=1.0)
        ticket = Ticket(request, lambda _: None)  # a cancelled ticket is noticed by its own task
        self._running.add(ticket)
        asyncio.run_coroutine_threadsafe(self._run(ticket, prompt_ids), self._loop)
        return ticket

    def generate(self, request: GenerationRequest) -> Generation:
        return self.submit(request).result()

    # ---- on the event loop

    async def _run(self, ticket: Ticket, prompt_ids: list[int]) -> None:
        key = ticket.request.adapter
        self.engine.hold([key])
        ticket.started_at = ticket.submitted_at
        try:
            ticket._finish(await self._watched(ticket, prompt_ids))
        except SwitchboardError as exc:
            ticket._finish(error=exc)
        except Exception as exc:  # whatever else fails one request, never the loop
            log.exception("a vLLM request failed")
            ticket._finish(error=GenerationError(f"the generation failed ({type(exc).__name__}); see the server log"))
        finally:
            self._running.discard(ticket)
            self.engine.release([key])  # quick: an unload it starts runs on the engine's own thread

    async def _watched(self, ticket: Ticket, prompt_ids: list[int]) -> Generation:
        """The generation, or a cancelled one as soon as the ticket is cancelled (the connection closes)."""
        task = asyncio.ensure_future(self._generate(ticket, prompt_ids))
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=CANCEL_POLL_S)
                if ticket.cancelled and not task.done():
                    task.cancel()
                    return Generation(text="", prompt_tokens=len(prompt_ids), completion_tokens=0, finish_reason="cancelled")
            return task.result()
        finally:
            task.cancel()

    async def _generate(self, ticket: Ticket, prompt_ids: list[int]) -> Generation:
        try:
            return await self._stream(ticket, prompt_ids)
        except (AdapterNotLoadedError, UnavailableError):
            if ticket.first_token_at is not None:  # text was streamed already: the caller sees the failure
                raise
        # The server restarted (it lost its adapters, and pooled connections are stale): repair, then try once more.
        await asyncio.to_thread(self.engine.repair)
        return await self._stream(ticket, prompt_ids)

    async def _stream(self, ticket: Ticket, prompt_ids: list[int]) -> Generation:
        request = ticket.request
        model = request.adapter or await asyncio.to_thread(lambda: self.engine.base_name)
        text, token_ids, finish, usage = [], [], None, None
        async for chunk in self.engine.client.stream(self._http, completion_body(model, prompt_ids, request)):
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices", []):
                if piece := choice.get("text"):
                    text.append(piece)
                    ticket._text(piece)
                token_ids.extend(choice.get("token_ids") or [])
                finish = choice.get("finish_reason") or finish
        usage = usage or {}
        return Generation(
            text="".join(text).strip(),
            prompt_tokens=int(usage.get("prompt_tokens", len(prompt_ids))),
            completion_tokens=int(usage.get("completion_tokens", len(token_ids))),
            finish_reason=FINISH_REASONS.get(finish, "stop"),
            token_ids=tuple(token_ids),
        )
