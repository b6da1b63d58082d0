"""The Gradio UI: a chat tab for agents and lawyers, knowledge, adapter and training tabs for operators.

Each tab lives in its own module and is composed here. The UI goes through
the chat pipeline and the admin actions only (:class:`bot.admin.Admin`, the
same ones the HTTP admin routes call); the admin tabs ask for the admin token
when one is configured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from bot.admin import Admin
from bot.ui.adapters import Adapters
from bot.ui.chat import Chat
from bot.ui.guard import PRIVATE, AdminToken
from bot.ui.knowledge import Knowledge
from bot.ui.training import Training

if TYPE_CHECKING:
    from bot.parts import Parts


def build_ui(parts: "Parts", admin: Admin | None = None) -> gr.Blocks:
    """The page, its tabs and their events, on the parts' pipeline and admin actions; queued for many users at once."""
    settings = parts.settings
    admin = admin or parts.admin
    token = AdminToken(settings.admin_token)
    chat = Chat(parts.pipeline)
    with gr.Blocks(title="Switchboard") as blocks:
        gr.Markdown("## Switchboard")
        with gr.Tab("Chat"):
            chat_adapter = chat.build()
        with gr.Tab("Knowledge"):
            Knowledge(admin, token).build()
        with gr.Tab("Adapters"):
            Adapters(parts.pipeline, admin, token, chat.adapter_choices).build(chat_adapter)
        with gr.Tab("Training") as training_tab:
            Training(admin, token, settings.training).build(training_tab)
        blocks.load(lambda: gr.update(choices=chat.adapter_choices()), None, [chat_adapter], **PRIVATE)
    blocks.queue(default_concurrency_limit=settings.server.ui_concurrency)
    return blocks
