"""The HTTP edge: an OpenAI-compatible chat API, feedback, health and admin routes, with the UI on the same port.

Handlers parse bodies themselves (size-capped JSON, multipart uploads) so
every bad request gets one clear OpenAI-style error, ``{"error": {"message",
"type"}}``, from the single exception handler here. Chat turns are prepared
(routed, retrieved, checked against the context window) before any response
starts, so a rejected request gets a 4xx status rather than a broken stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from bot.admin import check_token, split_commas, split_lines
from bot.guards import ERROR_TYPES, AllowedMethods, BodyLimit, SameOrigin, UploadGate, error_response, is_loopback_name
from bot.openapi import OPTIONAL_AUTH, chat_body, error_responses, install_schema, json_body, multipart_body
from bot.parts import Parts
from bot.pipeline import TurnRequest, TurnResult, TurnStream
from core.errors import (
    BusyError,
    ConfigError,
    ForbiddenError,
    InvalidRequestError,
    RequestCancelledError,
    SwitchboardError,
)
from core.settings import Settings
from training.artifacts.config import DTYPE_HELP, FORMAT_HELP

log = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.25  # how often a request waiting for its answer checks that its client is still there
MAX_JSON_DEPTH = 32  # OpenAI requests nest 6 deep; 100,000 deep once overflowed the parser's stack
MAX_INT_DIGITS = 32  # past 4,300 digits Python refuses to convert, past a few dozen no field means anything
SURROGATE = re.compile("[\ud800-\udfff]")  # a lone half of a UTF-16 pair: no UTF-8 text can hold it


# ---- request bodies --------------------------------------------------------------------------------


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
                "ignore_eos": self.ignore_eos,
            },
        )


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
    data = await read_json(request)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequestError(validation_message(exc)) from None


def validation_message(exc: ValidationError | RequestValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return f"'{where}': {first['msg']}" if where else first["msg"]


# ---- responses -------------------------------------------------------------------------------------


def switchboard_field(result: TurnResult, feedback_token: str | None) -> dict[str, Any]:
    """The ``switchboard`` object of a response: the CLI's fields, how the turn was routed and checked, its timings."""
    return {
        **result.to_dict(),
        "feedback_token": feedback_token,
        "route_reason": result.route_reason,
        "retrieval": {name: round(value, 4) for name, value in result.route.retrieval.items()},
        "checks": {"action": result.checks.action, "problems": len(result.checks.problems)},
        "timings_ms": result.timings_ms,
    }


def completion_body(completion_id: str, created: int, result: TurnResult, feedback_token: str | None) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": result.adapter or "base",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.answer},
                "finish_reason": finish_reason(result),
            }
        ],
        "usage": usage(result),
        "switchboard": switchboard_field(result, feedback_token),
    }


def finish_reason(result: TurnResult) -> str:
    return "length" if result.finish_reason == "length" else "stop"


def usage(result: TurnResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


# ---- serving checks ------------------------------------------------------------------------------


# ---- client disconnects ------------------------------------------------------------------------------


async def unless_disconnected(request: Request, stream: TurnStream, awaitable) -> Any:
    """Await a step of a turn; if the client disconnects first, cancel the turn's generation and raise.

    A client that goes away must not keep its row: its generation stops within one decoding step.
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


def check_bind(host: str, admin_token: str | None) -> None:
    """Without an admin token the admin routes are open, so only this machine may reach them."""
    if admin_token:
        return
    if not is_loopback_name(host):
        raise ConfigError(
            f"refusing to serve on {host} without an admin token: set SWITCHBOARD_ADMIN_TOKEN, or bind 127.0.0.1"
        )


# ---- the application ---------------------------------------------------------------------------------


def create_app(parts: Parts, ui: bool = True) -> FastAPI:
    """The API routes, then the Gradio UI mounted at ``/`` (routes declared first take precedence)."""
    settings = parts.settings
    pipeline = parts.pipeline
    admin = parts.admin
    app = FastAPI(
        title="Switchboard",
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
        responses=error_responses(),
    )
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(AllowedMethods, routes=app.router.routes)
    app.add_middleware(UploadGate, settings=settings)
    # No origin is allowed: the UI and the API share one origin, which needs no CORS. Its presence also tells
    # Gradio not to add its own, which admits any http://localhost:<port> page when serving on localhost.
    app.add_middleware(CORSMiddleware, allow_origins=[])
    app.add_middleware(SameOrigin, settings=settings)
    bearer = HTTPBearer(auto_error=False, description="The server's SWITCHBOARD_ADMIN_TOKEN.")

    @app.exception_handler(SwitchboardError)
    async def _switchboard_error(request: Request, exc: SwitchboardError) -> JSONResponse:
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if isinstance(exc, BusyError) else None
        if exc.status_code == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return error_response(exc.status_code, str(exc), headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); see the server log")

    def require_admin(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        check_token(settings.admin_token, credentials.credentials.strip() if credentials else None)

    def token_of(result: TurnResult) -> str | None:
        return parts.log.feedback_token(result.message_id) if result.message_id else None

    # ---- chat

    @app.post("/v1/chat/completions", openapi_extra=chat_body("ChatCompletionRequest"))
    async def chat_completions(request: Request):
        body: ChatCompletionRequest = await parse_json(request, ChatCompletionRequest)
        turn = await run_in_threadpool(pipeline.prepare, body.to_turn())
        stream = pipeline.stream(turn)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if not body.stream:
            await unless_disconnected(request, stream, drain(stream))
            return completion_body(completion_id, created, stream.result, token_of(stream.result))
        pieces = stream.__aiter__()
        first = await unless_disconnected(request, stream, first_piece(pieces))  # an error before it is an HTTP error
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return TurnEvents(
            _events(completion_id, created, turn, first, pieces, stream, include_usage),
            stream,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _events(completion_id, created, turn, first, pieces, stream, include_usage) -> AsyncIterator[str]:
        def chunk(delta: dict, finish: str | None = None, **extra) -> str:
            return sse(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": turn.adapter or "base",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                    **extra,
                }
            )

        route = {
            "adapter": turn.adapter,
            "adapter_version": turn.adapter_version,
            "confidence": turn.confidence,
            "route_reason": turn.route.reason,
            "sources": turn.sources(),
            "conversation_id": turn.request.conversation_id,
            "message_id": None,
        }
        yield chunk({"role": "assistant", "content": ""}, switchboard=route)
        try:
            if first:
                yield chunk({"content": first})
            async for piece in pieces:
                yield chunk({"content": piece})
        except SwitchboardError as exc:
            yield sse({"error": {"message": str(exc), "type": ERROR_TYPES.get(exc.status_code, "server_error")}})
            return
        except Exception as exc:
            log.exception("chat turn failed while streaming")
            yield sse({"error": {"message": f"internal error ({type(exc).__name__})", "type": "server_error"}})
            return
        result = stream.result
        yield chunk({}, finish_reason(result), switchboard=switchboard_field(result, token_of(result)))
        if include_usage:
            yield sse(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": result.adapter or "base",
                    "choices": [],
                    "usage": usage(result),
                }
            )
        yield sse("[DONE]")

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        now = int(time.time())

        def entry(name: str, description: str) -> dict[str, Any]:
            return {"id": name, "object": "model", "created": now, "owned_by": "switchboard", "description": description}

        data = [
            entry("auto", "Routes each message to the adapter that fits it."),
            entry("base", "The base model with no adapter."),
        ]
        data += [entry(m.name, m.description) for m in parts.registry.list() if m.enabled]
        return {"object": "list", "data": data}

    @app.post("/v1/feedback", openapi_extra={**json_body("FeedbackRequest"), **OPTIONAL_AUTH})
    async def feedback(
        request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
    ) -> dict[str, Any]:
        """Rate an answer. Trusted with the answer's feedback_token or the admin token; kept untrusted otherwise."""
        body: FeedbackRequest = await parse_json(request, FeedbackRequest)
        trusted = credentials is not None and settings.admin_token is not None
        if trusted:
            check_token(settings.admin_token, credentials.credentials.strip())
        elif body.feedback_token is not None:
            if not parts.log.check_feedback_token(body.message_id, body.feedback_token):
                raise ForbiddenError("the feedback_token is not the one given with this answer")
            trusted = True
        await run_in_threadpool(
            parts.log.add_feedback,
            body.message_id,
            body.rating,
            comment=body.comment,
            correction=body.correction,
            trusted=trusted,
        )
        return {"message_id": body.message_id, "rating": body.rating, "status": "recorded", "trusted": trusted}

    @app.get("/health")
    def health() -> dict[str, Any]:
        if parts.built("scheduler") and not parts.scheduler.alive:
            return error_response(503, "the generation worker is not running; see the server log")
        adapters = [{"name": m.name, "version": m.version, "status": m.status} for m in parts.registry.list()]
        return {"status": "ok", "base_model": settings.base_model, "adapters": adapters}

    # ---- admin

    guarded = [Depends(require_admin)]

    @app.get("/admin/adapters", dependencies=guarded)
    def list_adapters() -> list[dict[str, Any]]:
        return [m.summary() for m in parts.registry.list()]

    @app.post("/admin/adapters", dependencies=guarded, status_code=201, openapi_extra=ADAPTER_FORM)
    async def install_adapter(request: Request) -> dict[str, Any]:
        form = await request.form(max_files=64)
        try:
            uploads = _uploads(form)
            name = str(form.get("name") or "").strip()
            if not name:
                raise InvalidRequestError("the form field 'name' is required")
            manifest = await run_in_threadpool(
                admin.install_adapter,
                uploads,
                name,
                description=str(form.get("description") or ""),
                examples=_examples(form.get("examples")),
                collections=split_commas(str(form.get("collections") or "")),
                system_prompt=str(form.get("system_prompt") or "") or None,
                no_answer=str(form.get("no_answer") or "") or None,
            )
        finally:
            await form.close()
        return {**manifest.summary(), "collections": manifest.collections, "examples": len(manifest.examples)}

    @app.post("/admin/adapters/{name}/enable", dependencies=guarded)
    def enable_adapter(name: str) -> dict[str, Any]:
        return admin.set_enabled(name, True).summary()

    @app.post("/admin/adapters/{name}/disable", dependencies=guarded)
    def disable_adapter(name: str) -> dict[str, Any]:
        return admin.set_enabled(name, False).summary()

    @app.delete("/admin/adapters/{name}", dependencies=guarded)
    def remove_adapter(name: str) -> dict[str, Any]:
        admin.remove_adapter(name)
        return {"name": name, "removed": True}

    @app.post(
        "/admin/adapters/{name}/export", dependencies=guarded, status_code=201, openapi_extra=json_body("ExportRequest")
    )
    async def export_adapter(name: str, request: Request) -> dict[str, Any]:
        """Build an export (ExportRequest as JSON); the answer lists the files and where to download them."""
        body = await parse_json(request, ExportRequest)
        return await run_in_threadpool(admin.export_adapter, name, body.format, body.version, body.dtype)

    @app.get("/admin/exports/{export_id}.zip", dependencies=guarded)
    async def download_export(export_id: str) -> FileResponse:
        archive = await run_in_threadpool(admin.export_archive, export_id)
        return FileResponse(archive, media_type="application/zip", filename=archive.name)

    @app.get("/admin/feedback", dependencies=guarded)
    def untrusted_feedback() -> list[dict[str, Any]]:
        """Feedback sent without the answer's feedback token, waiting for an operator to accept it."""
        return parts.log.untrusted_feedback()

    @app.post("/admin/feedback/{message_id}/accept", dependencies=guarded)
    def accept_feedback(message_id: str = Path(max_length=128)) -> dict[str, Any]:
        """Let training use the untrusted feedback on this answer."""
        return {"message_id": message_id, "accepted": parts.log.accept_feedback(message_id)}

    @app.get("/admin/knowledge", dependencies=guarded)
    def list_knowledge() -> list[dict[str, Any]]:
        return parts.knowledge.list_collections()

    @app.post("/admin/knowledge/{collection}", dependencies=guarded, openapi_extra=multipart_body([], {}))
    async def ingest(collection: str, request: Request) -> dict[str, Any]:
        form = await request.form(max_files=1000)
        try:
            replace = str(form.get("replace") or "").strip().lower() in ("1", "true", "yes", "on")
            return await run_in_threadpool(admin.ingest, _uploads(form), collection, False, replace)
        finally:
            await form.close()

    @app.delete("/admin/knowledge/{collection}/{source}", dependencies=guarded)
    def remove_document(collection: str, source: str) -> dict[str, Any]:
        return admin.remove_document(source, collection)

    @app.post("/admin/train", dependencies=guarded, status_code=202, openapi_extra=json_body("TrainRequest"))
    async def start_training(request: Request) -> dict[str, Any]:
        """Start a run in the background (the TrainRequest fields as JSON); poll GET /admin/train/{run_id}."""
        body = await read_json(request)
        if not isinstance(body, dict):
            raise InvalidRequestError("the training request must be a JSON object")
        run_id = await run_in_threadpool(parts.training_runs.start, body)  # training checks the fields
        return {"run_id": run_id, "status_url": f"/admin/train/{run_id}"}

    @app.get("/admin/train/{run_id}", dependencies=guarded)
    def training_status(run_id: str) -> dict[str, Any]:
        return parts.training_runs.status(run_id)

    install_schema(app, _body_models, token_required=settings.admin_token is not None)
    if ui:
        import gradio as gr

        from bot.ui import build_ui

        blocks = build_ui(parts, admin)
        app = gr.mount_gradio_app(
            app, blocks, path="/", max_file_size=settings.server.max_upload_bytes, ssr_mode=False, footer_links=[],
            allowed_paths=[str(admin.exports_dir)],  # the Adapters tab offers exports for download
        )
    return app


ADAPTER_FORM = multipart_body(
    ["name"],
    {
        "name": "Adapter name; an installed name gets its next version.",
        "description": "What the adapter is for.",
        "examples": "Routing examples: one per line, or a JSON list of strings.",
        "collections": "Knowledge collections it retrieves from, comma-separated.",
        "system_prompt": "Its system prompt.",
        "no_answer": "What it says when the sources hold no answer.",
    },
)


def _body_models() -> list[type[BaseModel]]:
    from training.request import TrainRequest

    return [ChatCompletionRequest, FeedbackRequest, TrainRequest, ExportRequest]


def _uploads(form) -> list[tuple[str, Any]]:
    files = [value for value in form.getlist("files") if isinstance(value, UploadFile)]
    if not files:
        raise InvalidRequestError("attach the files as multipart form field 'files'")
    return [(f.filename, f.file) for f in files]


def _examples(value) -> list[str]:
    """Routing examples: one per line, or a JSON list of strings."""
    text = str(value or "").strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(f"'examples' is not a valid JSON list ({exc})") from None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise InvalidRequestError("'examples' must be a list of strings")
        return [i.strip() for i in items if i.strip()]
    return split_lines(text)


# ---- serving -----------------------------------------------------------------------------------------


def warm(parts: Parts) -> None:
    """Load every long-lived part before the first request, logging each step."""
    steps = [
        ("base model and engine", lambda: parts.engine),
        ("embedding model", lambda: parts.encoder),
        ("knowledge base", lambda: parts.knowledge),
        ("router", lambda: parts.router),
        ("conversation log", lambda: parts.log),
    ]
    for label, step in steps:
        started = time.perf_counter()
        log.info("loading %s ...", label)
        step()
        log.info("loaded %s in %.1fs", label, time.perf_counter() - started)
    parts.registry.check_installed()  # an adapter damaged on disk is disabled here, never fatal
    enabled = [m for m in parts.registry.list() if m.enabled][: parts.settings.max_resident_adapters]
    for manifest in enabled:
        started = time.perf_counter()
        try:
            parts.engine.activate([parts.engine.ensure(manifest)])
        except SwitchboardError as exc:
            log.warning("adapter %s v%d could not be loaded; it loads on demand: %s", manifest.name, manifest.version, exc)
            continue
        log.info("loaded adapter %s v%d in %.1fs", manifest.name, manifest.version, time.perf_counter() - started)


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Serve the UI at / and the API at /v1 on one port until interrupted."""
    import uvicorn

    from engine.threads import reserve_for_workers

    reserve_for_workers()  # before the models load: the scheduler's thread decodes on every core

    host = host or settings.server.host
    port = port or settings.server.port
    check_bind(host, settings.admin_token)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not settings.admin_token:
        log.warning("no admin token set (SWITCHBOARD_ADMIN_TOKEN): serving on loopback only, admin actions open to local users")
    parts = Parts(settings)
    warm(parts)
    app = create_app(parts)
    log.info("Switchboard at http://%s:%d/ (API at /v1)", host, port)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)

