"""The Adapters tab: list, enable, disable, remove and upload adapters, export one, try the router.

A change here is live at once (the admin actions tell the engine and the
router), and the Chat tab's adapter choice follows it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gradio as gr

from bot.admin import Admin, split_commas, split_lines
from bot.pipeline import Pipeline
from bot.ui.exports import Exports
from bot.ui.guard import PRIVATE, AdminToken, given, user_errors

COLUMNS = ["name", "version", "status", "description", "rank", "bytes", "collections"]


class Adapters:
    def __init__(
        self, pipeline: Pipeline, admin: Admin, token: AdminToken, chat_choices: Callable[[], list[str]]
    ) -> None:
        self.pipeline = pipeline
        self.admin = admin
        self.token = token
        self.chat_choices = chat_choices

    def build(self, chat_adapter: gr.Dropdown) -> None:
        """The tab's components and events; every change also refreshes ``chat_adapter``, the Chat tab's choice."""
        token = self.token.box("adapters-token")
        refresh = gr.Button("Show adapters")
        status = gr.Markdown(elem_id="adapters-status")
        table = gr.Dataframe(
            headers=COLUMNS, value=self.rows() if self.token.expected is None else None, label="Adapters",
            interactive=False, elem_id="adapters-table",
        )
        with gr.Row():
            name = gr.Dropdown(label="Adapter", choices=self.admin.adapter_names(), scale=3)
            enable = gr.Button("Enable", scale=1)
            disable = gr.Button("Disable", scale=1)
            remove = gr.Button("Remove", variant="stop", scale=1)
        upload_fields, install = self._upload_form()
        Exports(self.admin, self.token).build(token, name)
        with gr.Row():
            route_message = gr.Textbox(label="Try the router on a message", scale=3, elem_id="route-message")
            route = gr.Button("Route", scale=1)
        route_result = gr.JSON(label="Route", elem_id="route-result")

        view = [status, table, name, chat_adapter]
        refresh.click(self.show, [token], view, **PRIVATE)
        install.click(self.install, [token, *upload_fields], view, **PRIVATE)
        for button, action in ((enable, "enable"), (disable, "disable"), (remove, "remove")):
            button.click(self.change(action), [token, name], view, **PRIVATE)
        route.click(self.route, [token, route_message], [route_result], **PRIVATE)

    @staticmethod
    def _upload_form() -> tuple[list[gr.Component], gr.Button]:
        """The upload accordion: the PEFT files and the manifest fields of the adapter they become, and Install."""
        with gr.Accordion("Upload a PEFT LoRA adapter", open=False):
            files = gr.File(label="adapter_config.json + adapter_model.safetensors, or one .zip", file_count="multiple")
            fields = [
                files,
                gr.Textbox(label="Name (a-z, 0-9, '-', '_')"),
                gr.Textbox(label="Description"),
                gr.Textbox(label="Routing examples (one per line)", lines=5),
                gr.Textbox(label="Knowledge collections (comma-separated)"),
                gr.Textbox(label="System prompt", lines=3),
                gr.Textbox(label="Reply when the sources do not answer", lines=2),
            ]
            button = gr.Button("Install", variant="primary")
        return fields, button

    def rows(self) -> list[list]:
        return [
            [m.name, m.version, m.status, m.description[:120], m.rank, m.size_bytes, ", ".join(m.collections)]
            for m in self.admin.adapters()
        ]

    def view(self, message: str = "") -> tuple:
        """The status line, the table, the adapter choice of this tab and of the Chat tab, after a change."""
        names = self.admin.adapter_names()
        return (
            message,
            self.rows(),
            gr.update(choices=names, value=names[0] if names else None),
            gr.update(choices=self.chat_choices()),
        )

    @user_errors
    def show(self, token: str) -> tuple:
        self.token.check(token)
        return self.view()

    @user_errors
    def install(self, token, files, name, description, examples, collections, system_prompt, no_answer) -> tuple:
        self.token.check(token)
        if not files:
            raise gr.Error("Upload adapter_config.json and adapter_model.safetensors, or one .zip of them.")
        manifest = self.admin.install_adapter(
            [(Path(f).name, Path(f)) for f in files],
            (name or "").strip(),
            description=description or "",
            examples=split_lines(examples),
            collections=split_commas(collections),
            system_prompt=given(system_prompt),
            no_answer=given(no_answer),
        )
        return self.view(f"Installed **{manifest.name}** v{manifest.version}.")

    def change(self, action: str) -> Callable[[str, str | None], tuple]:
        """The handler of one button: enable, disable or remove the chosen adapter."""

        @user_errors
        def run(token: str, name: str | None) -> tuple:
            self.token.check(token)
            if not name:
                raise gr.Error("Choose an adapter.")
            if action == "remove":
                self.admin.remove_adapter(name)
                return self.view(f"Removed **{name}**.")
            manifest = self.admin.set_enabled(name, action == "enable")
            return self.view(f"**{name}** is {manifest.status}.")

        return run

    @user_errors
    def route(self, token: str, message: str) -> dict:
        """Where the router would send ``message`` under 'auto', with every adapter's score."""
        self.token.check(token)
        if not (message or "").strip():
            raise gr.Error("Type a message to route.")
        route = self.pipeline.route(message)
        return {"adapter": route.adapter, "confidence": route.confidence, "scores": route.scores}
