"""What every tab's handlers share: private events, library errors as browser messages, the admin token.

Admin handlers are private (not callable through the Gradio API) and check
the admin token themselves anyway, as the HTTP admin routes do.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr

from bot.admin import check_token
from bot.api.guards import UPLOAD_COOKIE, UPLOAD_PATH
from core.errors import SwitchboardError

PRIVATE = {"api_visibility": "private"}
# The browser uploads files before a handler runs, so uploads carry the admin token in a cookie (bot.api.guards.UploadGate).
REMEMBER_TOKEN_FOR_UPLOADS = f"""(token) => {{
    document.cookie = "{UPLOAD_COOKIE}=" + encodeURIComponent(token || "") + "; path={UPLOAD_PATH}; SameSite=Strict";
}}"""

Handler = TypeVar("Handler", bound=Callable[..., Any])


def user_errors(fn: Handler) -> Handler:
    """Library errors become a message in the browser; the server keeps serving."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SwitchboardError as exc:
            raise gr.Error(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def given(text: str | None) -> str | None:
    """A text box's value, or None when it is empty or blank."""
    return (text or "").strip() or None


class AdminToken:
    """The admin token box of each admin tab (shown only when a token is configured) and its check."""

    def __init__(self, expected: str | None) -> None:
        self.expected = expected

    def box(self, elem_id: str) -> gr.Textbox:
        box = gr.Textbox(
            elem_id=elem_id,
            label="Admin token",
            type="password",
            placeholder="SWITCHBOARD_ADMIN_TOKEN",
            visible=self.expected is not None,
            elem_classes=["admin-token"],
        )
        box.change(None, [box], None, js=REMEMBER_TOKEN_FOR_UPLOADS, **PRIVATE)
        return box

    def check(self, token: str | None) -> None:
        check_token(self.expected, given(token))

    def valid(self, token: str | None) -> bool:
        """For handlers that show admin data when they can and stay quiet otherwise."""
        try:
            self.check(token)
        except SwitchboardError:
            return False
        return True
