"""What every request passes before a route sees it: body caps, the cross-site rule, the upload gate, methods.

Each guard is plain ASGI middleware around the whole app (API and the Gradio
UI alike) and answers a refusal with the OpenAI-style error body the API
uses everywhere, ``{"error": {"message", "type", "code"}}``.

Browsers attach cookies and credentials to requests that any page can make,
so a server without an admin token, open to whoever reaches it, must tell a
page of its own from another site's. Browsers say where a request comes
from in ``Sec-Fetch-Site`` (and ``Origin``); tools (curl, the OpenAI SDK, the
CLI) send neither, and pass. Without a token the server also answers only
requests addressed to a loopback name, so a page whose name was rebound to
127.0.0.1 (DNS rebinding) gets nothing either.
"""

from __future__ import annotations

import ipaddress
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import unquote, urlsplit

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.routing import Match, Mount

from bot.admin import PayloadTooLargeError, check_token
from core.errors import SwitchboardError
from core.settings import Settings

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    415: "invalid_request_error",
    422: "invalid_request_error",
    503: "server_busy",
}
MULTIPART_OVERHEAD = 1_000_000  # form fields and part headers around the uploaded files
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BROWSER_SITES_ALLOWED = frozenset({"same-origin", "none"})  # "none": the user typed the address or opened a bookmark
UPLOAD_PATH = "/gradio_api/upload"
UPLOAD_COOKIE = "switchboard_admin"  # set by the UI's admin-token boxes, sent only to UPLOAD_PATH
HTTP_METHODS = ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE")  # sorted: the Allow order


def error_body(status: int, message: str) -> dict[str, dict[str, Any]]:
    """The one error shape of every refusal: ``{"error": {"message", "type", "code"}}``."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "code": status}}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message), status, headers=headers)


class BodyLimit:
    """Caps request bodies of the API and admin routes (the UI has Gradio's own upload cap).

    A declared Content-Length over the cap is refused before reading; a
    chunked body is counted as it arrives and refused when it passes the cap.
    """

    def __init__(self, app, settings: Settings) -> None:
        self.app = app
        self.json_cap = settings.server.max_body_bytes
        self.upload_cap = settings.server.max_upload_bytes + MULTIPART_OVERHEAD

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path.startswith("/v1/") or path.startswith("/admin/")):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        multipart = headers.get(b"content-type", b"").startswith(b"multipart/form-data")
        cap = self.upload_cap if multipart else self.json_cap
        message = f"the request body is over the limit of {cap} bytes"
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            response = error_response(413, message)
            return await response(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            event = await receive()
            if event["type"] == "http.request":
                seen += len(event.get("body", b""))
                if seen > cap:
                    raise PayloadTooLargeError(message)
            return event

        await self.app(scope, counted, send)


def is_loopback_name(name: str) -> bool:
    """Whether a host name or address is this machine: localhost, or a loopback address."""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_loopback_host(host: str | None) -> bool:
    """Whether a Host header (port ignored) names this machine."""
    return bool(host) and is_loopback_name(urlsplit(f"//{host}").hostname or "")


def cross_site_refusal(method: str, headers: Headers, loopback_only: bool) -> str | None:
    """Why a request must be refused as coming from another site, or None when it may go on.

    Requests that change nothing (GET, HEAD, OPTIONS) pass: without CORS
    headers another site cannot read their answers. A proxy may rewrite the
    Host header, so the browser's own ``Sec-Fetch-Site`` is believed first;
    ``Origin`` is compared with the Host only when it is missing.
    """
    if loopback_only and not is_loopback_host(headers.get("host")):
        return "this server has no admin token, so it answers only requests addressed to localhost or 127.0.0.1"
    if method in SAFE_METHODS:
        return None
    site = headers.get("sec-fetch-site")
    if site is not None:
        return None if site in BROWSER_SITES_ALLOWED else f"cross-site request refused ({site})"
    origin = headers.get("origin")
    if origin is None:
        return None
    parts = urlsplit(origin)
    if origin == "null" or parts.netloc.lower() != (headers.get("host") or "").lower():
        return f"cross-site request refused (from {origin[:200]})"
    return None


class SameOrigin:
    """Refuses what a page of another site makes a browser send (see the module docstring)."""

    def __init__(self, app, settings: Settings) -> None:
        self.app = app
        self.loopback_only = settings.admin_token is None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            refusal = cross_site_refusal(scope["method"], Headers(scope=scope), self.loopback_only)
            if refusal:
                return await error_response(403, refusal)(scope, receive, send)
        await self.app(scope, receive, send)


class UploadGate:
    """With an admin token, the UI's file uploads need it too, as a bearer header or the admin-token cookie.

    Only the admin tabs upload files; their token boxes put the token in a
    SameSite=Strict cookie scoped to the upload route, which the browser then
    sends with each upload.
    """

    def __init__(self, app, settings: Settings) -> None:
        self.app = app
        self.token = settings.admin_token

    async def __call__(self, scope, receive, send) -> None:
        if self.token is not None and scope["type"] == "http" and scope.get("path", "").rstrip("/") == UPLOAD_PATH:
            try:
                check_token(self.token, upload_token(Headers(scope=scope)))
            except SwitchboardError as exc:
                return await error_response(401, str(exc), {"WWW-Authenticate": "Bearer"})(scope, receive, send)
        await self.app(scope, receive, send)


def upload_token(headers: Headers) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except Exception:  # a malformed Cookie header carries no token
        return None
    morsel = cookie.get(UPLOAD_COOKIE)
    return unquote(morsel.value) if morsel is not None and morsel.value else None


class AllowedMethods:
    """A method that a route of the app's own does not take is a 405 naming the ones it does.

    The Gradio UI is mounted at ``/`` and would take every unmatched request
    (TRACE /v1/models answered 404 from there); the app's own routes are
    asked first. They are asked by matching, never by reading their method
    lists: FastAPI may hold an included router as one route.
    """

    def __init__(self, app, routes: list) -> None:
        self.app = app
        self.routes = routes  # the app's route list: filled later, read per request

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            allowed = self.allowed(scope)
            if allowed:
                methods = ", ".join(allowed)
                response = error_response(405, f"{scope['method']} is not allowed here (allowed: {methods})",
                                          {"Allow": methods})
                return await response(scope, receive, send)
        await self.app(scope, receive, send)

    def allowed(self, scope) -> list[str]:
        """The methods the app's routes take at this path when none takes the request's method; else none."""
        routes = [route for route in self.routes if not isinstance(route, Mount)]  # the UI's mount takes any path
        matches = [route.matches(scope)[0] for route in routes]
        if Match.FULL in matches or Match.PARTIAL not in matches:
            return []
        return [
            method for method in HTTP_METHODS
            if any(route.matches({**scope, "method": method})[0] is Match.FULL for route in routes)
        ]
