"""The text of one turn as it is released, read from a thread (``for``) or an event loop (``async for``).

The scheduler's ticket is the only queue between the decoding thread and the
reader: no thread is started per turn, and a reader on an event loop waits
without holding a worker thread. What is released depends on the checks:

- an answer with sources is held back until it has been checked against them
  (:func:`knowledge.grounding.ground_answer`) and arrives whole: nobody sees a
  fact before it is verified;
- an answer without sources is released as it is generated, in the user's
  Chinese script;
- the adapter's no-answer text, when retrieval found nothing, is released at once.

Once the text ends, the turn is logged (:meth:`bot.pipeline.Pipeline.conclude`)
and :attr:`TurnStream.result` is set. A reader that goes away before the end
(:meth:`TurnStream.cancel`, or by closing the iterator) stops the generation
within one decoding step, and the turn is not logged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

from bot.turn import PreparedTurn, TurnResult
from core.errors import RequestCancelledError
from engine.decoding import Generation
from knowledge.grounding import GroundingReport, ground_answer
from knowledge.grounding.script import chinese_script, in_script

if TYPE_CHECKING:
    from bot.pipeline import Pipeline


class TurnStream:
    def __init__(self, pipeline: Pipeline, turn: PreparedTurn) -> None:
        self.turn = turn
        self.result: TurnResult | None = None
        self._pipeline = pipeline
        config = pipeline.settings.grounding
        self._checked = turn.passages if config.check_citations or config.check_facts else []
        self._script = chinese_script(turn.request.message) if config.keep_script else None
        self._first_text: float | None = None
        self._generating = time.perf_counter()
        self._ticket = pipeline.submit(turn) if turn.no_answer is None else None

    def cancel(self) -> None:
        """The reader went away: stop the generation before its next step (a finished turn is unaffected)."""
        self.turn.cancel.set()

    def __iter__(self) -> Iterator[str]:
        try:
            if self._ticket is not None:
                for piece in self._ticket:
                    if shown := self._release(piece):
                        yield shown
            if tail := self._finish():
                yield tail
        finally:
            if self.result is None:
                self.cancel()

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            if self._ticket is not None:
                async for piece in self._ticket.pieces():
                    if shown := self._release(piece):
                        yield shown
            # The check and the log write take milliseconds and may wait on the database: not on the event loop.
            if tail := await asyncio.to_thread(self._finish):
                yield tail
        finally:
            if self.result is None:
                self.cancel()

    def _release(self, piece: str) -> str:
        """What of a generated piece is shown now: nothing while the answer waits for its check."""
        if self._checked:
            return ""
        self._mark_first_text()
        return in_script(piece, self._script)

    def _mark_first_text(self) -> None:
        if self._first_text is None:
            self._first_text = time.perf_counter()

    def _finish(self) -> str:
        """Check and log the finished turn; returns the text still to release (the whole checked answer)."""
        turn = self.turn
        if self._ticket is None:
            generation = Generation(text=turn.no_answer, prompt_tokens=0, completion_tokens=0, finish_reason="stop")
            report = GroundingReport(turn.no_answer, turn.no_answer, "unchecked")
            tail = turn.no_answer
        else:
            generation = self._ticket.result()
            if generation.finish_reason == "cancelled":  # nobody reads the answer: it is neither returned nor logged
                raise RequestCancelledError("the client went away; the generation was stopped")
            if self._checked:
                report = ground_answer(generation.text, self._checked, turn.request.message, self._pipeline.settings.grounding, turn.refusal)
                tail = report.answer
            else:
                report = GroundingReport(in_script(generation.text, self._script), generation.text, "unchecked")
                tail = ""
        if tail:
            self._mark_first_text()
        turn.timings["generate"] = time.perf_counter() - self._generating
        self.result = self._pipeline.conclude(turn, generation, report, self._first_text)
        return tail
