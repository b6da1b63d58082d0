"""Serving under load: continuous batching of concurrent requests across adapters.

Every request from any caller (HTTP API, UI, CLI) is submitted here and gets a
:class:`Ticket`. One worker thread owns the model: between two decoding steps it
admits waiting requests into the running :class:`engine.batch.Batch` (their prompts
are prefilled together and join the next step) and retires rows that finished or
were cancelled, so one long answer holds the others back by one step at most.
Each forward pass carries rows for different adapters (:mod:`engine.lora`); each
row keeps its own stream, token budget, stop strings, temperature
and seed.

Failures stay with their request: a row whose sampling or stream fails ends
alone, a prefill that fails fails only the rows it admitted, and anything else
that goes wrong in the loop fails the running rows and the loop starts again
with an empty batch. Should the worker thread die all the same, :attr:`alive`
turns false (``/health`` answers 503) and every waiting and new request gets a
:class:`core.errors.BusyError`: nobody waits on a thread that is gone.

The waiting line is bounded: past ``max_queue`` waiting requests ``submit``
raises :class:`core.errors.BusyError` (503 with Retry-After at the HTTP edge)
instead of building an unbounded backlog. Adapters outside the engine's resident
set are reloaded when their request is admitted; a request is admitted only while
its adapter and those of every running row fit within the residency limit.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace

from core.errors import BusyError, GenerationError, SwitchboardError
from core.settings import SchedulerConfig
from engine.batch import Batch
from engine.decoding import DecodeRow, Generation, GenerationRequest
from engine.threads import use_all

log = logging.getLogger(__name__)

_END = object()


class Ticket:
    """One submitted request: iterate it for text pieces (``for``, or :meth:`pieces` on an event loop), or block on
    :meth:`result`. Its queue is the only one between the decoding thread and the reader."""

    def __init__(self, request: GenerationRequest, withdraw: Callable[[Ticket], None]) -> None:
        self.request = request
        self.submitted_at = time.perf_counter()
        self.started_at: float | None = None
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self._pieces: queue.Queue = queue.Queue()
        self._finished = threading.Event()
        self._cancelled = threading.Event()
        self._generation: Generation | None = None
        self._error: BaseException | None = None
        self._withdraw = withdraw
        self._wake: Callable[[], None] | None = None  # set by an event-loop reader (:meth:`pieces`)

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    @property
    def cancelled(self) -> bool:
        """Cancelled here, or by the caller's own event (a client that went away)."""
        return self._cancelled.is_set() or (self.request.cancel is not None and self.request.cancel.is_set())

    def cancel(self) -> None:
        """Stop this request: a waiting one leaves the queue now, a running one the batch before the next step."""
        self._cancelled.set()
        self._withdraw(self)

    def __iter__(self) -> Iterator[str]:
        while (piece := self._pieces.get()) is not _END:
            yield piece
        if self._error is not None:
            raise self._error

    async def pieces(self) -> AsyncIterator[str]:
        """The text pieces, awaited on the caller's event loop: no thread waits for them."""
        loop = asyncio.get_running_loop()
        arrived = asyncio.Event()

        def wake() -> None:
            try:
                loop.call_soon_threadsafe(arrived.set)
            except RuntimeError:  # the reader's loop has closed; nobody is listening
                pass

        self._wake = wake
        while True:
            arrived.clear()
            try:
                piece = self._pieces.get_nowait()
            except queue.Empty:
                await arrived.wait()
                continue
            if piece is _END:
                break
            yield piece
        if self._error is not None:
            raise self._error

    def result(self, timeout: float | None = None) -> Generation:
        """The finished generation (``finish_reason="cancelled"`` after :meth:`cancel`); re-raises a failure."""
        if not self._finished.wait(timeout):
            raise TimeoutError("the generation did not finish in time")
        if self._error is not None:
            raise self._error
        return self._generation

    # Called by the scheduler's worker thread.

    def _text(self, piece: str) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self._put(piece)
        if self.request.on_text is not None:
            try:
                self.request.on_text(piece)
            except Exception:  # a caller that cannot take text any more (closed connection) stops its row
                log.debug("on_text failed; cancelling the request", exc_info=True)
                self.cancel()

    def _finish(self, generation: Generation | None = None, error: BaseException | None = None) -> None:
        self._generation, self._error = generation, error
        self.finished_at = time.perf_counter()
        self._finished.set()
        self._put(_END)

    def _put(self, item: object) -> None:
        self._pieces.put(item)
        if self._wake is not None:
            self._wake()


class Scheduler:
    """A bounded queue in front of one worker thread that decodes everything in a continuous batch."""

    def __init__(self, engine, config: SchedulerConfig) -> None:
        self.engine = engine
        self.config = config
        self._waiting: deque[tuple[Ticket, DecodeRow]] = deque()
        self._running: dict[DecodeRow, Ticket] = {}
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._seconds_per_request = 0.0  # moving average of admission-to-finish time, for Retry-After
        self.steps = 0
        self.restarts = 0  # times the loop failed outside a step and started again with an empty batch

    # ---- lifecycle

    def start(self) -> Scheduler:
        with self._wake:
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(target=self._work, name="scheduler", daemon=True)
                self._thread.start()
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        """Finish the current step, cancel running rows, refuse waiting requests, and end the worker."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # ---- callers

    @property
    def alive(self) -> bool:
        """Whether the worker runs: False once it is stopped or died (then every request is refused)."""
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running)

    def submit(self, request: GenerationRequest) -> Ticket:
        """Queue a request; raises BusyError when the queue is full, or a request error before queueing."""
        ticket = Ticket(request, self._withdraw)
        # A bad request fails here, in the caller's thread, before it takes a place in the queue.
        row = self.engine.new_row(replace(request, on_text=ticket._text))
        with self._wake:
            if not self.alive:
                raise BusyError("the generation scheduler is not running", retry_after=5.0)
            if len(self._waiting) >= self.config.max_queue:
                raise BusyError(
                    f"the server is busy: {len(self._waiting)} requests are waiting; retry later",
                    retry_after=self._retry_after(),
                )
            self._waiting.append((ticket, row))
            self._wake.notify()
        return ticket

    def generate(self, request: GenerationRequest) -> Generation:
        """Submit and wait; the batched counterpart of ``Engine.generate_batch([request])[0]``."""
        return self.submit(request).result()

    def _withdraw(self, ticket: Ticket) -> None:
        """A cancelled ticket frees its place in the queue at once (a running one is retired by the worker)."""
        with self._wake:
            entry = next((e for e in self._waiting if e[0] is ticket), None)
            if entry is None:
                return
            self._waiting.remove(entry)
        entry[1].cancel()
        ticket._finish(entry[1].result())

    def _retry_after(self) -> float:
        """Seconds until the queue has likely moved by its own length."""
        rounds = len(self._waiting) / self._capacity()
        return max(1.0, math.ceil(rounds * self._seconds_per_request))

    def _capacity(self) -> int:
        return self.config.max_batch_size if self.config.batching else 1

    # ---- the worker

    def _work(self) -> None:
        use_all(self.config.threads)  # see engine.threads: the decoding thread owns the cores
        batch = Batch(self.engine)
        try:
            while True:
                try:
                    if not self._turn(batch):
                        break
                except Exception as exc:  # a bug outside a step: fail what is in flight, start again, never hang
                    log.exception("the scheduler loop failed; failing the requests in flight and starting again")
                    self.restarts += 1
                    self._fail_running(batch, exc)
                    self._fail_waiting(_as_generation_error(exc))  # one of them may be what failed the loop
                    batch = Batch(self.engine)
        finally:
            self._shutdown(batch)

    def _turn(self, batch: Batch) -> bool:
        """One turn of the loop: retire, admit, step. False once the scheduler is stopping."""
        with self._wake:
            while not self._stopping and not self._waiting and not batch:
                self._wake.wait()
            if self._stopping:
                return False
        for row, ticket in self._running.items():
            if ticket.cancelled:
                row.cancel()
        self._finish(batch.retire())
        admitted = self._admit(batch)
        with self.engine.lock:
            if admitted:
                try:
                    finished = batch.admit(admitted)
                except Exception as exc:  # the prefill of these rows failed; the running batch is untouched
                    log.exception("a prefill failed; failing the %d rows it admitted", len(admitted))
                    for row in admitted:
                        self._running.pop(row)._finish(error=_as_generation_error(exc))
                else:
                    self._finish(finished)
            if batch:
                try:
                    finished = batch.step()
                except Exception as exc:  # a failed pass leaves the shared cache half-updated: its rows end
                    log.exception("a decoding step failed; failing the %d rows in it", len(self._running))
                    self._fail_running(batch, exc)
                else:
                    self._finish(finished)
                    self.steps += 1
        return True

    def _fail_waiting(self, error: BaseException) -> None:
        with self._wake:
            waiting, self._waiting = list(self._waiting), deque()
        for ticket, _ in waiting:
            ticket._finish(error=error)

    def _fail_running(self, batch: Batch, exc: BaseException) -> None:
        try:
            batch.abandon()
        except Exception:
            log.exception("the failed batch could not be released")
        error = _as_generation_error(exc)
        for row in list(self._running):
            self._running.pop(row)._finish(error=error)

    def _admit(self, batch: Batch) -> list[DecodeRow]:
        """Waiting requests that join the batch at this step, oldest first; their adapters are made resident."""
        room = self._capacity() - len(batch)
        admitted: list[DecodeRow] = []
        with self._wake:
            gone = [entry for entry in self._waiting if entry[0].cancelled]
            for entry in gone:
                self._waiting.remove(entry)
        for ticket, row in gone:
            row.cancel()
            ticket._finish(row.result())
        while room > 0:
            with self._wake:
                if not self._waiting:
                    break
                ticket, row = self._waiting[0]
                adapters = {r.request.adapter for r in admitted} | {row.request.adapter}
                if not self.engine.has_room({a for a in adapters if a is not None}):
                    break  # strictly in order: it joins when running rows release their adapters
                self._waiting.popleft()
            try:
                self.engine.activate([row.request.adapter])  # reload an evicted adapter now, one request at a time
            except Exception as exc:
                ticket._finish(error=_as_generation_error(exc))
                continue
            ticket.started_at = time.perf_counter()
            self._running[row] = ticket
            admitted.append(row)
            room -= 1
        return admitted

    def _finish(self, rows: list[DecodeRow]) -> None:
        for row in rows:
            ticket = self._running.pop(row)
            took = time.perf_counter() - ticket.started_at
            average = self._seconds_per_request
            self._seconds_per_request = took if not average else 0.8 * average + 0.2 * took
            if row.error is not None:
                ticket._finish(error=row.error)
            else:
                ticket._finish(row.result())

    def _shutdown(self, batch: Batch) -> None:
        """The worker ends (stopped, or died): every request it holds or would take gets an answer."""
        with self._wake:
            self._stopping = True
        try:
            self._finish(batch.abandon())
        except Exception:
            log.exception("the batch could not be released at shutdown")
        gone = BusyError("the server is shutting down", retry_after=5.0)
        for row in list(self._running):  # rows a failed release left behind
            self._running.pop(row)._finish(error=gone)
        self._fail_waiting(gone)


def _as_generation_error(exc: BaseException) -> SwitchboardError:
    """A product error as it is; anything else as the request's own generation failure (details in the log)."""
    if isinstance(exc, SwitchboardError):
        return exc
    return GenerationError(f"the generation failed ({type(exc).__name__}); other requests are unaffected")
