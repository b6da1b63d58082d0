"""The Gradio UI: a chat tab for agents and lawyers, knowledge and adapter tabs for operators.

Each answer is followed by a collapsed note naming the adapter that answered,
its confidence and the numbered sources, so a reader can check every [n].
The admin tabs call the same :class:`bot.admin.Admin` actions as the HTTP
admin routes and ask for the admin token when one is configured; their
handlers are private (not callable through the Gradio API), and check the
token themselves anyway.
"""

from __future__ import annotations

import functools
import html
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from bot.admin import Admin, check_token, split_commas, split_lines
from bot.errors import SwitchboardError
from bot.pipeline import TurnRequest, TurnResult

if TYPE_CHECKING:
    from bot.runtime import Runtime

PRIVATE = {"api_visibility": "private"}
SOURCE_PREVIEW_CHARS = 600
MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|~=$])")


def plain(text: str) -> str:
    """Source text shown as written: a line of '---' in a document must not turn the next line into a heading."""
    return MARKDOWN_SPECIALS.sub(r"\\\1", html.escape(text, quote=False))


def _user_errors(fn):
    """Library errors become a message in the browser; the server keeps serving."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SwitchboardError as exc:
            raise gr.Error(str(exc)) from None

    return wrapper


def answer_note(result: TurnResult) -> dict[str, Any]:
    """The collapsed message under an answer: who answered, how sure the router was, and the sources."""
    who = f"{result.adapter} v{result.adapter_version}" if result.adapter else "base model"
    confidence = "chosen by you" if result.route_reason == "requested" else f"confidence {result.confidence:.2f}"
    count = len(result.sources)
    title = f"Answered by {who} · {confidence} · {count} source{'s' if count != 1 else ''}"
    if not result.sources:
        body = "No sources were used for this answer."
    else:
        parts = []
        for source in result.sources:
            section = f" — {plain(source['section'])}" if source.get("section") else ""
            text = source["text"].strip()
            if len(text) > SOURCE_PREVIEW_CHARS:
                text = text[:SOURCE_PREVIEW_CHARS].rstrip() + " …"
            quoted = "\n".join(f"> {plain(line)}" for line in text.splitlines() if line.strip())
            parts.append(f"**[{source['number']}] {plain(source['source'])}**{section} (score {source['score']:.2f})\n\n{quoted}")
        body = "\n\n".join(parts)
    return {"role": "assistant", "content": body, "metadata": {"title": title, "status": "done"}}


def build_ui(runtime: "Runtime", admin: Admin | None = None) -> gr.Blocks:
    settings = runtime.settings
    admin = admin or Admin(runtime)
    needs_token = settings.admin_token is not None

    def adapter_choices() -> list[str]:
        return ["auto", "base", *(m.name for m in runtime.registry.list() if m.enabled)]

    def token_box(elem_id: str) -> gr.Textbox:
        return gr.Textbox(
            elem_id=elem_id,
            label="Admin token",
            type="password",
            placeholder="SWITCHBOARD_ADMIN_TOKEN",
            visible=needs_token,
            elem_classes=["admin-token"],
        )

    def require(token: str | None) -> None:
        check_token(settings.admin_token, (token or "").strip() or None)

    # ---- chat

    def respond(message: str, history: list[dict], adapter: str, conversation_id: str | None, ids: list):
        history = list(history or [])
        ids = list(ids or [])
        try:
            turn = runtime.pipeline.prepare(TurnRequest(message or "", adapter or "auto", conversation_id))
        except SwitchboardError as exc:
            raise gr.Error(str(exc)) from None
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        yield "", history, conversation_id, ids
        stream = runtime.pipeline.stream(turn)
        text = ""
        try:
            for piece in stream:
                text += piece
                history[-1] = {"role": "assistant", "content": text}
                yield "", history, conversation_id, ids
        except SwitchboardError as exc:
            raise gr.Error(str(exc)) from None
        result = stream.result
        history[-1] = {"role": "assistant", "content": result.answer or "(no answer)"}
        history.append(answer_note(result))
        ids += [None, result.message_id, result.message_id]
        yield "", history, result.conversation_id, ids

    @_user_errors
    def rate(ids: list, data: gr.LikeData) -> str:
        index = data.index[0] if isinstance(data.index, (list, tuple)) else data.index
        message_id = ids[index] if ids and 0 <= index < len(ids) else None
        if message_id is None:
            return "Only answers can be rated."
        rating = "up" if data.liked is True or data.liked == "Like" else "down"
        runtime.log.add_feedback(message_id, rating)
        return f"Thanks: your rating ({'thumbs up' if rating == 'up' else 'thumbs down'}) is saved."

    @_user_errors
    def correct(text: str, ids: list) -> tuple[str, str]:
        answered = [i for i in (ids or []) if i]
        if not answered:
            return text, "Ask something first: a correction applies to the last answer."
        if not (text or "").strip():
            return text, "Write what the answer should have said."
        runtime.log.add_feedback(answered[-1], "down", correction=text.strip())
        return "", "Thanks: your correction is saved for the next training run."

    def new_conversation():
        return [], None, [], "", ""

    # ---- knowledge

    @_user_errors
    def ingest(token: str, collection: str, files: list[str] | None, progress=gr.Progress(track_tqdm=True)):
        require(token)
        collection = (collection or "").strip()
        if not collection:
            raise gr.Error("Name a collection.")
        if not files:
            raise gr.Error("Choose the documents to upload.")
        report = admin.ingest([(Path(f).name, Path(f)) for f in files], collection, progress=True)
        lines = [f"Ingested {report['documents']} document(s), {report['chunks']} chunk(s) into **{collection}**."]
        lines += [f"- unchanged: {name}" for name in report.get("unchanged", [])]
        lines += [f"- skipped {item['path']}: {item['reason']}" for item in report["skipped"]]
        return ("\n".join(lines), *documents(token, collection), gr.update(choices=collections_list()))

    def collections_list() -> list[str]:
        return [c["name"] for c in runtime.knowledge.list_collections()]

    @_user_errors
    def documents(token: str, collection: str):
        require(token)
        if not collection or collection not in collections_list():
            return [], gr.update(choices=[], value=None)
        rows = runtime.knowledge.list_documents(collection)
        table = [[r["source"], r["chunks"], r["ingested_at"]] for r in rows]
        return table, gr.update(choices=[r["source"] for r in rows], value=None)

    @_user_errors
    def remove_document(token: str, collection: str, source: str | None):
        require(token)
        if not source:
            raise gr.Error("Choose a document to remove.")
        removed = admin.remove_document(source, collection)
        return (f"Removed **{source}** ({removed['chunks']} chunks) from {collection}.", *documents(token, collection))

    @_user_errors
    def search(token: str, collection: str, query: str):
        require(token)
        passages = runtime.knowledge.search(query or "", [collection] if collection else [])
        return [[p.source, p.section, round(p.score, 3), p.text[:300]] for p in passages]

    # ---- adapters

    def adapter_rows() -> list[list]:
        return [
            [m.name, m.version, m.status, m.description[:120], m.rank, m.size_bytes, ", ".join(m.collections)]
            for m in runtime.registry.list()
        ]

    def adapter_names() -> list[str]:
        return runtime.registry.names()

    def adapters_view(message: str = ""):
        names = adapter_names()
        return (
            message,
            adapter_rows(),
            gr.update(choices=names, value=names[0] if names else None),
            gr.update(choices=adapter_choices()),
        )

    @_user_errors
    def list_adapters(token: str):
        require(token)
        return adapters_view()

    @_user_errors
    def install(token, files, name, description, examples, collections, system_prompt, no_answer):
        require(token)
        if not files:
            raise gr.Error("Upload adapter_config.json and adapter_model.safetensors, or one .zip of them.")
        manifest = admin.install_adapter(
            [(Path(f).name, Path(f)) for f in files],
            (name or "").strip(),
            description=description or "",
            examples=split_lines(examples),
            collections=split_commas(collections),
            system_prompt=(system_prompt or "").strip() or None,
            no_answer=(no_answer or "").strip() or None,
        )
        return adapters_view(f"Installed **{manifest.name}** v{manifest.version}.")

    def change(action: str):
        @_user_errors
        def run(token: str, name: str | None):
            require(token)
            if not name:
                raise gr.Error("Choose an adapter.")
            if action == "remove":
                admin.remove_adapter(name)
                return adapters_view(f"Removed **{name}**.")
            manifest = admin.set_enabled(name, action == "enable")
            return adapters_view(f"**{name}** is {manifest.status}.")

        return run

    @_user_errors
    def try_router(token: str, message: str) -> dict:
        require(token)
        if not (message or "").strip():
            raise gr.Error("Type a message to route.")
        route = runtime.router.route(message)
        return {"adapter": route.adapter, "confidence": route.confidence, "scores": route.scores}

    # ---- layout

    with gr.Blocks(title="Switchboard") as blocks:
        gr.Markdown("## Switchboard")
        with gr.Tab("Chat"):
            conversation = gr.State(None)
            message_ids = gr.State([])
            with gr.Row():
                adapter = gr.Dropdown(
                    choices=adapter_choices(), value="auto", label="Adapter", scale=3, elem_id="adapter-select"
                )
                new = gr.Button("New conversation", scale=1, elem_id="new-conversation")
            chatbot = gr.Chatbot(label="Conversation", height=520, elem_id="chatbot", buttons=["copy"])
            with gr.Row():
                message = gr.Textbox(
                    label="Message", placeholder="Ask a question…", scale=5, elem_id="message", autofocus=True
                )
                send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
            feedback_status = gr.Markdown(elem_id="feedback-status")
            with gr.Accordion("Suggest a correction for the last answer", open=False):
                correction = gr.Textbox(label="What the answer should have said", lines=3, elem_id="correction")
                send_correction = gr.Button("Suggest a correction", elem_id="send-correction")

        with gr.Tab("Knowledge"):
            kb_token = token_box("knowledge-token")
            with gr.Row():
                kb_collection = gr.Dropdown(
                    choices=collections_list(), allow_custom_value=True, label="Collection", scale=3,
                    elem_id="knowledge-collection",
                )
                kb_refresh = gr.Button("Show documents", scale=1)
            kb_files = gr.File(
                label="Documents (.txt .md .html .pdf .docx .csv .jsonl)", file_count="multiple", elem_id="knowledge-files"
            )
            kb_ingest = gr.Button("Upload into collection", variant="primary")
            kb_status = gr.Markdown(elem_id="knowledge-status")
            kb_table = gr.Dataframe(
                headers=["source", "chunks", "ingested"], label="Documents", interactive=False, elem_id="knowledge-table"
            )
            with gr.Row():
                kb_source = gr.Dropdown(label="Document", choices=[], scale=3, elem_id="knowledge-source")
                kb_remove = gr.Button("Remove document", variant="stop", scale=1)
            with gr.Row():
                kb_query = gr.Textbox(label="Try a search", scale=3)
                kb_search = gr.Button("Search", scale=1)
            kb_results = gr.Dataframe(headers=["source", "section", "score", "text"], label="Results", interactive=False)

        with gr.Tab("Adapters"):
            ad_token = token_box("adapters-token")
            ad_refresh = gr.Button("Show adapters")
            ad_status = gr.Markdown(elem_id="adapters-status")
            ad_table = gr.Dataframe(
                headers=["name", "version", "status", "description", "rank", "bytes", "collections"],
                value=adapter_rows() if not needs_token else None,
                label="Adapters",
                interactive=False,
                elem_id="adapters-table",
            )
            with gr.Row():
                ad_name_select = gr.Dropdown(label="Adapter", choices=adapter_names(), scale=3)
                ad_enable = gr.Button("Enable", scale=1)
                ad_disable = gr.Button("Disable", scale=1)
                ad_remove = gr.Button("Remove", variant="stop", scale=1)
            with gr.Accordion("Upload a PEFT LoRA adapter", open=False):
                ad_files = gr.File(
                    label="adapter_config.json + adapter_model.safetensors, or one .zip", file_count="multiple"
                )
                ad_name = gr.Textbox(label="Name (a-z, 0-9, '-', '_')")
                ad_description = gr.Textbox(label="Description")
                ad_examples = gr.Textbox(label="Routing examples (one per line)", lines=5)
                ad_collections = gr.Textbox(label="Knowledge collections (comma-separated)")
                ad_system = gr.Textbox(label="System prompt", lines=3)
                ad_no_answer = gr.Textbox(label="Reply when the sources do not answer", lines=2)
                ad_install = gr.Button("Install", variant="primary")
            with gr.Row():
                ad_route_message = gr.Textbox(label="Try the router on a message", scale=3, elem_id="route-message")
                ad_route = gr.Button("Route", scale=1)
            ad_route_result = gr.JSON(label="Route", elem_id="route-result")

        # ---- events
        chat_inputs = [message, chatbot, adapter, conversation, message_ids]
        chat_outputs = [message, chatbot, conversation, message_ids]
        send.click(respond, chat_inputs, chat_outputs, api_name="chat")
        message.submit(respond, chat_inputs, chat_outputs, **PRIVATE)
        chatbot.like(rate, [message_ids], [feedback_status], **PRIVATE)
        send_correction.click(correct, [correction, message_ids], [correction, feedback_status], **PRIVATE)
        fresh = [chatbot, conversation, message_ids, feedback_status, message]
        new.click(new_conversation, None, fresh, **PRIVATE)
        chatbot.clear(new_conversation, None, fresh, **PRIVATE)  # the bin icon starts over too, not only the view
        blocks.load(lambda: gr.update(choices=adapter_choices()), None, [adapter], **PRIVATE)

        kb_listing = [kb_table, kb_source]
        kb_ingest.click(ingest, [kb_token, kb_collection, kb_files], [kb_status, *kb_listing, kb_collection], **PRIVATE)
        kb_refresh.click(documents, [kb_token, kb_collection], kb_listing, **PRIVATE)
        kb_collection.change(documents, [kb_token, kb_collection], kb_listing, **PRIVATE)
        kb_remove.click(remove_document, [kb_token, kb_collection, kb_source], [kb_status, *kb_listing], **PRIVATE)
        kb_search.click(search, [kb_token, kb_collection, kb_query], [kb_results], **PRIVATE)

        ad_view = [ad_status, ad_table, ad_name_select, adapter]
        ad_refresh.click(list_adapters, [ad_token], ad_view, **PRIVATE)
        ad_install.click(
            install,
            [ad_token, ad_files, ad_name, ad_description, ad_examples, ad_collections, ad_system, ad_no_answer],
            ad_view,
            **PRIVATE,
        )
        for button, action in ((ad_enable, "enable"), (ad_disable, "disable"), (ad_remove, "remove")):
            button.click(change(action), [ad_token, ad_name_select], ad_view, **PRIVATE)
        ad_route.click(try_router, [ad_token, ad_route_message], [ad_route_result], **PRIVATE)

    blocks.queue(default_concurrency_limit=settings.server.ui_concurrency)
    return blocks
