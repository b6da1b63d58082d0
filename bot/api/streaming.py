"""Waiting on a turn while watching its client, and its server-sent events.

A client that goes away must not keep its row in the batch: a waiting
request checks for a disconnect every :data:`DISCONNECT_POLL_S`, and a
streamed response cancels its turn when it ends early.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse

from bot.api.completions import Completion, sse
from bot.api.guards import ERROR_TYPES
from bot.turn import TurnResult
from bot.turn_stream import TurnStream
from core.errors import RequestCancelledError, SwitchboardError

log = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.25  # how often a request waiting for its answer checks that its client is still there
T = TypeVar("T")


async def unless_disconnected(request: Request, stream: TurnStream, awaitable: Awaitable[T]) -> T:
    """Await a step of a turn; if the client disconnects first, cancel the turn's generation and raise.

    Its generation stops within one decoding step.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                stream.cancel()
                raise RequestCancelledError("the client went away; the generation was stopped")
    finally:
        task.cancel()


async def drain(stream: TurnStream) -> None:
    async for _ in stream:
        pass


async def first_piece(pieces: AsyncIterator[str]) -> str:
    try:
        return await anext(pieces)
    except StopAsyncIteration:
        return ""


class TurnEvents(StreamingResponse):
    """The server-sent events of one turn; when the response ends early (the client disconnected), the turn
    is cancelled, so its row leaves the batch within one step. Cancelling a finished turn changes nothing."""

    def __init__(self, content: AsyncIterator[str], turn_stream: TurnStream, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.turn_stream = turn_stream

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.turn_stream.cancel()


async def events(
    completion: Completion,
    stream: TurnStream,
    first: str,
    pieces: AsyncIterator[str],
    token_of: Callable[[TurnResult], str | None],
    include_usage: bool,
) -> AsyncIterator[str]:
    """Who answers, the text as generated (``first`` was awaited before the response started), then the result.

    A failure once the response has started can only be told in the stream: it ends with an error event.
    """
    yield sse(completion.first_chunk(stream.turn))
    try:
        if first:
            yield sse(completion.chunk({"content": first}))
        async for piece in pieces:
            yield sse(completion.chunk({"content": piece}))
    except SwitchboardError as exc:
        yield sse({"error": {"message": str(exc), "type": ERROR_TYPES.get(exc.status_code, "server_error")}})
        return
    except Exception as exc:
        log.exception("chat turn failed while streaming")
        yield sse({"error": {"message": f"internal error ({type(exc).__name__})", "type": "server_error"}})
        return
    for chunk in completion.last_chunks(stream.result, token_of(stream.result), include_usage):
        yield sse(chunk)
    yield sse("[DONE]")
