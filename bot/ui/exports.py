"""The Adapters tab's export: an adapter built for transformers, vLLM, llama.cpp or Ollama, offered for download."""

from __future__ import annotations

import gradio as gr

from bot.admin import Admin
from bot.ui.guard import PRIVATE, AdminToken, user_errors
from bot.ui.views import export_markdown
from training.artifacts.config import DTYPE_HELP, DTYPES, FORMAT_HELP, FORMATS

DEFAULT_DTYPE = "default"


def dtype_choices(fmt: str) -> list[str]:
    """The precisions an export format offers, after the format's own default."""
    return [DEFAULT_DTYPE, *DTYPES.get(fmt, ())]


class Exports:
    def __init__(self, admin: Admin, token: AdminToken) -> None:
        self.admin = admin
        self.token = token

    def build(self, token: gr.Textbox, adapter: gr.Dropdown) -> None:
        """The export accordion; it exports the adapter chosen in ``adapter``, checking the tab's ``token``."""
        with gr.Accordion("Export for transformers, vLLM, llama.cpp or Ollama", open=False):
            with gr.Row():
                fmt = gr.Dropdown(
                    choices=list(FORMATS), value="merged", label="Format", info=FORMAT_HELP, elem_id="export-format"
                )
                dtype = gr.Dropdown(
                    choices=dtype_choices("merged"), value=DEFAULT_DTYPE, label="Precision", info=DTYPE_HELP,
                    elem_id="export-dtype",
                )
                version = gr.Number(label="Version (empty or 0: the served one)", precision=0)
            button = gr.Button("Export", variant="primary", elem_id="export-button")
            status = gr.Markdown(elem_id="export-status")
            download = gr.File(label="Download", interactive=False, elem_id="export-file")
        fmt.change(lambda f: gr.update(choices=dtype_choices(f), value=DEFAULT_DTYPE), [fmt], [dtype], **PRIVATE)
        button.click(self.export, [token, adapter, fmt, dtype, version], [status, download], **PRIVATE)

    @user_errors
    def export(self, token: str, name: str | None, fmt: str, dtype: str | None, version, progress=gr.Progress()):
        self.token.check(token)
        if not name:
            raise gr.Error("Choose an adapter.")
        result = self.admin.export_adapter(
            name,
            fmt,
            int(version) if version else None,
            None if dtype in (None, "", DEFAULT_DTYPE) else dtype,
            progress=lambda fraction, message: progress(fraction, desc=message),
        )
        archive = self.admin.export_archive(result["id"])
        return export_markdown(result), str(archive)
