"""Request bodies: their models, and reading JSON so that every bad body gets one clear 4xx error.

Handlers read their bodies themselves rather than through FastAPI's parameter
binding: the JSON is size-capped (``guards.BodyLimit``), strict (no NaN, no
thousand-digit integers, no lone surrogates, bounded nesting) and a refusal
names the field in one line.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.turn import TurnRequest
from core.errors import InvalidRequestError, SwitchboardError, validation_message
from training.artifacts.config import DTYPE_HELP, FORMAT_HELP

MAX_JSON_DEPTH = 32  # OpenAI requests nest 6 deep; 100,000 deep once overflowed the parser's stack
MAX_INT_DIGITS = 32  # past 4,300 digits Python refuses to convert, past a few dozen no field means anything
SURROGATE = re.compile("[\ud800-\udfff]")  # a lone half of a UTF-16 pair: no UTF-8 text can hold it


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str = Field(description="Only 'text' parts are understood.")
    text: str | None = Field(None, description="The text of a text part.")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send name, tool_calls, ... which we do not use

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        if any(part.type != "text" for part in self.content):
            raise InvalidRequestError("only text message content is supported")
        return "".join(part.text or "" for part in self.content)


class ChatCompletionRequest(BaseModel):
    """An OpenAI chat-completions request; fields we do not use (presence_penalty, user, ...) are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(description="Adapter name, 'auto' to route, or 'base' for no adapter.")
    messages: list[ChatMessage] = Field(
        description="The conversation; the last one is the user's new message, and it must hold some text.",
        json_schema_extra={"minItems": 1},  # checked in to_turn, whose message says what to send
    )
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(None, ge=1, le=8192)
    max_completion_tokens: int | None = Field(None, ge=1, le=8192)
    temperature: float | None = Field(None, ge=0.0, le=5.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    repetition_penalty: float | None = Field(
        None, ge=1.0, le=3.0, description="vLLM's extension: penalty on tokens the answer already holds (1: none)."
    )
    ignore_eos: bool | None = Field(
        None, description="vLLM's extension: generate max_tokens tokens, past end-of-turn (benchmarks)."
    )
    n: int = Field(1, ge=1, le=1, description="One choice per request.")
    conversation_id: str | None = Field(None, description="Switchboard: log the turn into this conversation.")

    def to_turn(self) -> TurnRequest:
        """Earlier messages are the history; with only the new message, a conversation_id brings the logged one."""
        if not self.messages:
            raise InvalidRequestError("'messages' is empty: send at least one user message")
        *earlier, last = self.messages
        if last.role != "user":
            raise InvalidRequestError(f"the last message must come from the user, not the {last.role}")
        system = "\n\n".join(m.text() for m in earlier if m.role in ("system", "developer") and m.text())
        history = [{"role": m.role, "content": m.text()} for m in earlier if m.role in ("user", "assistant")]
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        return TurnRequest(
            message=last.text(),
            adapter=self.model,
            conversation_id=self.conversation_id,
            history=history if history or self.conversation_id is None else None,
            system_prompt=system or None,
            options={
                "max_new_tokens": self.max_completion_tokens or self.max_tokens,
                "temperature": self.temperature,
                "top_p": self.top_p,
                "stop": stop,
                "seed": self.seed,
                "repetition_penalty": self.repetition_penalty,
                "ignore_eos": self.ignore_eos,
            },
        )

    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk (OpenAI's ``stream_options``)."""
        return bool((self.stream_options or {}).get("include_usage"))


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message_id: str = Field(min_length=1, max_length=128, description="The message_id of the rated answer.")
    feedback_token: str | None = Field(
        None,
        max_length=128,
        description="The answer's switchboard.feedback_token: without it (or the admin token) the feedback is "
        "kept as untrusted, and training ignores it until an operator accepts it.",
    )
    rating: Literal["up", "down"]
    comment: str | None = Field(None, max_length=10_000)
    correction: str | None = Field(None, max_length=100_000, description="What the answer should have said.")


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["merged", "gguf", "ollama", "peft"] = Field(description=FORMAT_HELP)
    version: int | None = Field(None, ge=1, description="Adapter version; default: the one being served.")
    dtype: str | None = Field(None, description=DTYPE_HELP)


def body_models() -> list[type[BaseModel]]:
    """The bodies the served schema describes (TrainRequest is imported late: training is heavy)."""
    from training.request import TrainRequest

    return [ChatCompletionRequest, FeedbackRequest, TrainRequest, ExportRequest]


class UnsupportedMediaTypeError(SwitchboardError):
    """A body that is not JSON where JSON is expected (a text/plain body is never read as JSON)."""

    status_code = 415


async def read_json(request: Request) -> Any:
    """The body as JSON that every later step can take: a JSON media type (or none), UTF-8 that encodes,
    integers of sane length, no NaN, nesting a few dozen deep at most."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type and media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaTypeError(f"send the body as application/json, not {media_type[:100]}")
    body = await request.body()
    try:
        data = json.loads(body, parse_int=_bounded_int, parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"the request body is not valid JSON ({exc})") from None
    except RecursionError:
        raise InvalidRequestError(f"the request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    check_json_values(data)
    return data


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise InvalidRequestError(f"a number in the request body has more than {MAX_INT_DIGITS} digits")
    return int(text)


def _no_constant(name: str) -> None:
    raise InvalidRequestError(f"{name} is not a JSON value")


def check_json_values(data: Any) -> None:
    """Refuse what json.loads lets through but no later step can take: deep nesting, lone surrogates."""
    pending = [(data, 0)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, str):
            if SURROGATE.search(value):
                raise InvalidRequestError("the request body holds an unpaired UTF-16 surrogate (\\ud800-\\udfff)")
        elif isinstance(value, (list, dict)):
            if depth >= MAX_JSON_DEPTH:
                raise InvalidRequestError(f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
            items = [*value, *value.values()] if isinstance(value, dict) else value
            pending.extend((item, depth + 1) for item in items)


async def parse_json(request: Request, model: type[BaseModel]) -> Any:
    """The body as ``model``, or one line naming the field that is wrong."""
    data = await read_json(request)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequestError(validation_message(exc, whole="{problem}")) from None
