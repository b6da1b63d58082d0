"""The FastAPI app: the guards around every request, one error shape, the routers, then the Gradio UI.

Every refusal, from a route, a guard or FastAPI itself, is one OpenAI-style
error body, ``{"error": {"message", "type", "code"}}``, built by
``guards.error_response``.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bot.api import admin_routes, chat, health
from bot.api.bodies import body_models
from bot.api.guards import AllowedMethods, BodyLimit, SameOrigin, UploadGate, error_response
from bot.api.openapi import error_responses, install_schema
from bot.parts import Parts
from core.errors import BusyError, SwitchboardError, validation_message

log = logging.getLogger(__name__)


def create_app(parts: Parts, ui: bool = True) -> FastAPI:
    """The API routes, then the Gradio UI mounted at ``/`` (routes declared first take precedence)."""
    settings = parts.settings
    app = FastAPI(
        title="Switchboard",
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
        responses=error_responses(),
    )
    app.state.settings = settings
    app.state.pipeline = parts.pipeline
    app.state.admin = parts.admin
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(AllowedMethods, routes=app.router.routes)
    app.add_middleware(UploadGate, settings=settings)
    # No origin is allowed: the UI and the API share one origin, which needs no CORS. Its presence also tells
    # Gradio not to add its own, which admits any http://localhost:<port> page when serving on localhost.
    app.add_middleware(CORSMiddleware, allow_origins=[])
    app.add_middleware(SameOrigin, settings=settings)
    app.add_exception_handler(SwitchboardError, _switchboard_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    for router in (chat.router, health.router, admin_routes.router):
        app.include_router(router)
    install_schema(app, body_models, token_required=settings.admin_token is not None)
    if ui:
        import gradio as gr

        from bot.ui import build_ui

        app = gr.mount_gradio_app(
            app, build_ui(parts, parts.admin), path="/", max_file_size=settings.server.max_upload_bytes,
            ssr_mode=False, footer_links=[],
            allowed_paths=[str(parts.admin.exports_dir)],  # the Adapters tab offers exports for download
        )
    return app


async def _switchboard_error(request: Request, exc: SwitchboardError) -> JSONResponse:
    headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if isinstance(exc, BusyError) else None
    if exc.status_code == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return error_response(exc.status_code, str(exc), headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(400, validation_message(exc, whole="{problem}"))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc.status_code, str(exc.detail))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, f"internal error ({type(exc).__name__}); see the server log")
