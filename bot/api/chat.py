"""The OpenAI-compatible routes: chat completions, the models a chat may name, and feedback on an answer.

A turn is prepared (routed, retrieved, checked against the context window)
before any response starts, so a rejected request gets a 4xx status rather
than a broken stream.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from bot.admin import check_token
from bot.api.bodies import ChatCompletionRequest, FeedbackRequest, parse_json
from bot.api.completions import Completion
from bot.api.dependencies import Credentials, PipelineDep, SettingsDep
from bot.api.openapi import OPTIONAL_AUTH, chat_body, json_body
from bot.api.streaming import TurnEvents, drain, events, first_piece, unless_disconnected
from bot.pipeline import Pipeline
from bot.turn import TurnResult
from core.errors import ForbiddenError

router = APIRouter()


def feedback_token(pipeline: Pipeline, result: TurnResult) -> str | None:
    """The token given with an answer that makes its rating trusted (none for a turn that was not logged)."""
    return pipeline.feedback_token(result.message_id) if result.message_id else None


@router.post("/v1/chat/completions", openapi_extra=chat_body("ChatCompletionRequest"))
async def chat_completions(request: Request, pipeline: PipelineDep):
    body: ChatCompletionRequest = await parse_json(request, ChatCompletionRequest)
    turn = await run_in_threadpool(pipeline.prepare, body.to_turn())
    stream = pipeline.stream(turn)
    completion = Completion.of(turn)
    if not body.stream:
        await unless_disconnected(request, stream, drain(stream))
        return completion.body(stream.result, feedback_token(pipeline, stream.result))
    pieces = stream.__aiter__()
    first = await unless_disconnected(request, stream, first_piece(pieces))  # an error before it is an HTTP error
    return TurnEvents(
        events(completion, stream, first, pieces, lambda result: feedback_token(pipeline, result), body.include_usage()),
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/v1/models")
def models(pipeline: PipelineDep) -> dict[str, Any]:
    now = int(time.time())

    def entry(name: str, description: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": now, "owned_by": "switchboard", "description": description}

    data = [
        entry("auto", "Routes each message to the adapter that fits it."),
        entry("base", "The base model with no adapter."),
    ]
    data += [entry(m.name, m.description) for m in pipeline.adapters()]
    return {"object": "list", "data": data}


@router.post("/v1/feedback", openapi_extra={**json_body("FeedbackRequest"), **OPTIONAL_AUTH})
async def feedback(
    request: Request, pipeline: PipelineDep, settings: SettingsDep, credentials: Credentials
) -> dict[str, Any]:
    """Rate an answer. Trusted with the answer's feedback_token or the admin token; kept untrusted otherwise."""
    body: FeedbackRequest = await parse_json(request, FeedbackRequest)
    trusted = credentials is not None and settings.admin_token is not None
    if trusted:
        check_token(settings.admin_token, credentials.credentials.strip())
    elif body.feedback_token is not None:
        if not pipeline.check_feedback_token(body.message_id, body.feedback_token):
            raise ForbiddenError("the feedback_token is not the one given with this answer")
        trusted = True
    await run_in_threadpool(
        pipeline.rate, body.message_id, body.rating, comment=body.comment, correction=body.correction, trusted=trusted
    )
    return {"message_id": body.message_id, "rating": body.rating, "status": "recorded", "trusted": trusted}
