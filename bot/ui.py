"""The Gradio UI: a chat tab for agents and lawyers, knowledge, adapter and training tabs for operators.

Each answer is followed by a collapsed note naming the adapter that answered,
its confidence and the numbered sources, so a reader can check every [n].
The admin tabs call the same :class:`bot.admin.Admin` actions as the HTTP
admin routes and ask for the admin token when one is configured; their
handlers are private (not callable through the Gradio API), and check the
token themselves anyway. The training tab holds no training code: it starts
runs on the parts's one :class:`bot.training_runs.RunManager`, the same one the
HTTP admin API uses, and only formats what training reports.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from bot.admin import Admin, check_token, split_commas, split_lines
from bot.guards import UPLOAD_COOKIE, UPLOAD_PATH
from bot.pipeline import TurnRequest, TurnResult
from core.errors import InvalidRequestError, SwitchboardError
from training.artifacts.config import DTYPE_HELP, DTYPES, FORMAT_HELP, FORMATS

if TYPE_CHECKING:
    from bot.parts import Parts

PRIVATE = {"api_visibility": "private"}
# The browser uploads files before a handler runs, so uploads carry the admin token in a cookie (bot.guards.UploadGate).
REMEMBER_TOKEN_FOR_UPLOADS = f"""(token) => {{
    document.cookie = "{UPLOAD_COOKIE}=" + encodeURIComponent(token || "") + "; path={UPLOAD_PATH}; SameSite=Strict";
}}"""
SOURCE_PREVIEW_CHARS = 600
MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|~=$])")
THIS_ADAPTER = "(this adapter)"  # not a valid adapter name, so it cannot shadow one
POLL_SECONDS = 2.0
ACTIVE_STATES = ("queued", "running")
TRAIN_FIELDS = (
    "adapter", "log_adapter", "rating", "include_corrections", "since", "until", "min_answer_chars", "include_sources",
    "max_steps", "golden", "force",
)  # the TrainRequest fields of the Training tab's controls, in their order
VARIANTS = (("candidate", "candidate"), ("live", "live version"), ("base", "base"))
DEFAULT_DTYPE = "default"


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


CHECK_NOTES = {
    "passed": "Every citation and fact of this answer was found in its sources.",
    "repaired": "Citations of this answer were corrected to the sources that hold its facts.",
    "replaced": "The generated answer stated something its sources do not hold, so the best-matching passage "
    "(or the assistant's hand-off) is shown instead.",
}


def answer_note(result: TurnResult) -> dict[str, Any]:
    """The collapsed message under an answer: who answered, how sure the router was, and the sources."""
    who = f"{result.adapter} v{result.adapter_version}" if result.adapter else "base model"
    confidence = "chosen by you" if result.route_reason == "requested" else f"confidence {result.confidence:.2f}"
    if result.route_reason == "retrieval":
        confidence += ", chosen for its documents"
    count = len(result.sources)
    title = f"Answered by {who} · {confidence} · {count} source{'s' if count != 1 else ''}"
    checks = CHECK_NOTES.get(result.checks.action)
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
    if result.route.retrieval:
        relevance = ", ".join(f"{plain(name)} {value:.2f}" for name, value in sorted(result.route.retrieval.items()))
        body = f"How well each assistant's documents answer this: {relevance}.\n\n{body}"
    if checks:
        body = f"{checks}\n\n{body}"
    return {"role": "assistant", "content": body, "metadata": {"title": title, "status": "done"}}


def train_request(values: Sequence[Any]) -> dict[str, Any]:
    """The Training tab's controls as TrainRequest fields; an empty box means the setting's default."""
    fields = dict(zip(TRAIN_FIELDS, values, strict=True))
    for name in ("adapter", "log_adapter", "since", "until", "golden"):
        fields[name] = (fields[name] or "").strip() or None
    if not fields["adapter"]:
        raise InvalidRequestError("choose an adapter, or type a new name, to train")
    if fields["log_adapter"] == THIS_ADAPTER:
        fields["log_adapter"] = None
    for name in ("min_answer_chars", "max_steps"):
        fields[name] = None if fields[name] is None else int(fields[name])
    return {"from_logs": True, **{name: value for name, value in fields.items() if value is not None}}


def dataset_markdown(card: dict[str, Any]) -> str:
    """What a run would train on, and what was left out and why, so filters can be checked before training."""
    counts = card["counts"]
    lines = [
        f"**{counts['read']}** read, **{counts['kept']} kept**: **{counts['train']}** for training, "
        f"**{counts['held_out']}** held out, plus **{counts['replay']}** general chats replayed.",
        "",
    ]
    lines += [f"- **warning**: {plain(warning)}" for warning in card.get("warnings", [])]
    lines += [f"- dropped {n}: {plain(reason)}" for reason, n in card["dropped"].items()] or ["- nothing dropped"]
    scrubbed = ", ".join(f"{n} {plain(kind)}" for kind, n in card["scrubbed"].items())
    lines.append(f"- personal data scrubbed: {scrubbed or 'none found'}")
    return "\n".join(lines)


def run_markdown(status: dict[str, Any]) -> str:
    """One line on where a run stands: state, phase, step of total, time left, latest losses; then any error."""
    parts = [f"Run `{status['run_id']}` of **{plain(status['adapter'])}**: **{status['state']}**"]
    if status["phase"]:
        parts.append(status["phase"])
    progress = status.get("progress")
    if progress:
        parts.append(f"step {progress['step']}/{progress['total']}")
        if status["phase"] == "training" and progress["eta_s"] is not None:
            parts.append(f"about {progress['eta_s']:.0f} s left")
        if progress["loss"] is not None:
            parts.append(f"loss {progress['loss']:.4f}")
        if progress["eval_loss"] is not None:
            parts.append(f"held-out loss {progress['eval_loss']:.4f}")
    line = " · ".join(parts)
    if status.get("outcome"):
        line = f"{line}\n\n{plain(status['outcome'])}"
    return f"{line}\n\n{plain(status['error'])}" if status.get("error") else line


def report_markdown(report: dict[str, Any] | None) -> str:
    """The candidate beside the live version and the base, then the gate's decision and whether it was deployed."""
    if not report or "evaluation" not in report:
        return ""
    evaluation = report["evaluation"]
    sections = {
        "held_out": evaluation["held_out"], "regression": evaluation["regression"], "golden": evaluation.get("golden") or {}
    }
    columns = [(key, label) for key, label in VARIANTS if any(key in section for section in sections.values())]
    rows = (
        ("held-out loss", "held_out", "loss", "{:.4f}"),
        ("held-out perplexity", "held_out", "perplexity", "{:.3f}"),
        ("golden pass rate", "golden", "pass_rate", "{:.0%}"),
        ("general perplexity", "regression", "perplexity", "{:.3f}"),
    )
    lines = ["| | " + " | ".join(label for _, label in columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for label, section, field, number in rows:
        if sections[section]:
            cells = [number.format(sections[section][key][field]) if key in sections[section] else "—" for key, _ in columns]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", f"General perplexity {evaluation['regression']['rise']:+.1%} against the base."]
    lines += _gate_lines(report)
    return "\n".join(lines)


def _gate_lines(report: dict[str, Any]) -> list[str]:
    gate = report.get("gate")
    if not gate:
        return []
    verdict = "passed" if gate["passed"] else "rejected"
    lines = ["", f"**Gate: {verdict}** (compared with the {dict(VARIANTS)[gate['compared_with']]}):", ""]
    lines += [f"- {plain(reason)}" for reason in gate["reasons"]]
    installed = report.get("installed")
    lines.append("")
    if installed:
        lines.append(f"Deployed **{plain(installed['name'])} v{installed['version']}**: it is served now.")
    else:
        lines.append("Not deployed: the live version is unchanged.")
    return lines


def loss_frame(status: dict[str, Any]):
    """The run's training loss per step, for the loss plot; typed even when empty, so the axes start out numeric."""
    import pandas as pd

    return pd.DataFrame(status.get("losses") or [], columns=["step", "loss"]).astype({"step": int, "loss": float})


def build_ui(parts: "Parts", admin: Admin | None = None) -> gr.Blocks:
    settings = parts.settings
    admin = admin or parts.admin
    needs_token = settings.admin_token is not None

    def adapter_choices() -> list[str]:
        return ["auto", "base", *(m.name for m in parts.registry.list() if m.enabled)]

    def token_box(elem_id: str) -> gr.Textbox:
        box = gr.Textbox(
            elem_id=elem_id,
            label="Admin token",
            type="password",
            placeholder="SWITCHBOARD_ADMIN_TOKEN",
            visible=needs_token,
            elem_classes=["admin-token"],
        )
        box.change(None, [box], None, js=REMEMBER_TOKEN_FOR_UPLOADS, **PRIVATE)
        return box

    def require(token: str | None) -> None:
        check_token(settings.admin_token, (token or "").strip() or None)

    # ---- chat

    def respond(message: str, history: list[dict], adapter: str, conversation_id: str | None, ids: list):
        history = list(history or [])
        ids = list(ids or [])
        try:
            turn = parts.pipeline.prepare(TurnRequest(message or "", adapter or "auto", conversation_id))
        except SwitchboardError as exc:
            raise gr.Error(str(exc)) from None
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        yield "", history, conversation_id, ids
        stream = parts.pipeline.stream(turn)
        text = ""
        try:
            for piece in stream:
                text += piece
                history[-1] = {"role": "assistant", "content": text}
                yield "", history, conversation_id, ids
        except SwitchboardError as exc:
            raise gr.Error(str(exc)) from None
        finally:
            stream.cancel()  # a closed tab stops the generator here: its row leaves the batch (a no-op once finished)
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
        parts.log.add_feedback(message_id, rating)
        return f"Thanks: your rating ({'thumbs up' if rating == 'up' else 'thumbs down'}) is saved."

    @_user_errors
    def correct(text: str, ids: list) -> tuple[str, str]:
        answered = [i for i in (ids or []) if i]
        if not answered:
            return text, "Ask something first: a correction applies to the last answer."
        if not (text or "").strip():
            return text, "Write what the answer should have said."
        parts.log.add_feedback(answered[-1], "down", correction=text.strip())
        return "", "Thanks: your correction is saved for the next training run."

    def new_conversation():
        return [], None, [], "", ""

    # ---- knowledge

    @_user_errors
    def ingest(
        token: str, collection: str, files: list[str] | None, replace: bool, progress=gr.Progress(track_tqdm=True)
    ):
        require(token)
        collection = (collection or "").strip()
        if not collection:
            raise gr.Error("Name a collection.")
        if not files:
            raise gr.Error("Choose the documents to upload.")
        report = admin.ingest([(Path(f).name, Path(f)) for f in files], collection, progress=True, replace=replace)
        lines = [f"Ingested {report['documents']} document(s), {report['chunks']} chunk(s) into **{collection}**."]
        lines += [f"- unchanged: {name}" for name in report.get("unchanged", [])]
        lines += [f"- skipped {item['path']}: {item['reason']}" for item in report["skipped"]]
        return ("\n".join(lines), *documents(token, collection), gr.update(choices=collections_list()))

    def collections_list() -> list[str]:
        return [c["name"] for c in parts.knowledge.list_collections()]

    @_user_errors
    def documents(token: str, collection: str):
        require(token)
        if not collection or collection not in collections_list():
            return [], gr.update(choices=[], value=None)
        rows = parts.knowledge.list_documents(collection)
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
        passages = parts.knowledge.search(query or "", [collection] if collection else [])
        return [[p.source, p.section, round(p.score, 3), p.text[:300]] for p in passages]

    # ---- adapters

    def adapter_rows() -> list[list]:
        return [
            [m.name, m.version, m.status, m.description[:120], m.rank, m.size_bytes, ", ".join(m.collections)]
            for m in parts.registry.list()
        ]

    def adapter_names() -> list[str]:
        return parts.registry.names()

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
    def export(token: str, name: str | None, fmt: str, dtype: str | None, version, progress=gr.Progress()):
        require(token)
        if not name:
            raise gr.Error("Choose an adapter.")
        result = admin.export_adapter(
            name,
            fmt,
            int(version) if version else None,
            None if dtype in (None, "", DEFAULT_DTYPE) else dtype,
            progress=lambda fraction, message: progress(fraction, desc=message),
        )
        archive = admin.export_archive(result["id"])
        return export_markdown(result), str(archive)

    @_user_errors
    def try_router(token: str, message: str) -> dict:
        require(token)
        if not (message or "").strip():
            raise gr.Error("Type a message to route.")
        route = parts.router.route(message)
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
            kb_replace = gr.Checkbox(
                False,
                label="Replace documents of the same name",
                info="Off: a file whose name a different document already has is skipped, and you are told.",
                elem_id="knowledge-replace",
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
            with gr.Accordion("Export for transformers, vLLM, llama.cpp or Ollama", open=False):
                with gr.Row():
                    ex_format = gr.Dropdown(
                        choices=list(FORMATS), value="merged", label="Format", info=FORMAT_HELP, elem_id="export-format"
                    )
                    ex_dtype = gr.Dropdown(
                        choices=dtype_choices("merged"), value=DEFAULT_DTYPE, label="Precision", info=DTYPE_HELP,
                        elem_id="export-dtype",
                    )
                    ex_version = gr.Number(label="Version (empty or 0: the served one)", precision=0)
                ex_button = gr.Button("Export", variant="primary", elem_id="export-button")
                ex_status = gr.Markdown(elem_id="export-status")
                ex_file = gr.File(label="Download", interactive=False, elem_id="export-file")
            with gr.Row():
                ad_route_message = gr.Textbox(label="Try the router on a message", scale=3, elem_id="route-message")
                ad_route = gr.Button("Route", scale=1)
            ad_route_result = gr.JSON(label="Route", elem_id="route-result")

        with gr.Tab("Training") as training_tab:
            training_controls(parts, admin, token_box("training-token"), require, training_tab)

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
        kb_ingest.click(
            ingest, [kb_token, kb_collection, kb_files, kb_replace], [kb_status, *kb_listing, kb_collection], **PRIVATE
        )
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
        ex_format.change(lambda f: gr.update(choices=dtype_choices(f), value=DEFAULT_DTYPE), [ex_format], [ex_dtype], **PRIVATE)
        ex_button.click(
            export, [ad_token, ad_name_select, ex_format, ex_dtype, ex_version], [ex_status, ex_file], **PRIVATE
        )
        ad_route.click(try_router, [ad_token, ad_route_message], [ad_route_result], **PRIVATE)

    blocks.queue(default_concurrency_limit=settings.server.ui_concurrency)
    return blocks


def dtype_choices(fmt: str) -> list[str]:
    return [DEFAULT_DTYPE, *DTYPES.get(fmt, ())]


def export_markdown(result: dict[str, Any]) -> str:
    """The files of an export with sizes and checksums, and what to run on the other side."""
    lines = [f"Exported **{result['adapter']}** v{result['version']} as {result['format']} ({result['seconds']} s):", ""]
    lines += [f"- `{f['path']}` {f['bytes'] / 1e6:,.1f} MB, sha256 `{f['sha256'][:16]}…`" for f in result["files"]]
    lines += ["", "Run it with:", "", "```", *result["usage"], "```"]
    return "\n".join(lines)


def training_controls(
    parts: "Parts", admin: Admin, token: gr.Textbox, require: Callable[[str | None], None], tab: gr.Tab
) -> None:
    """The Training tab's components and events, built inside the page's Blocks.

    Choose the adapter and the log filters, preview the dataset, start a run,
    follow it (a timer polls the shared run manager while it is active), read
    the evaluation report, roll back.
    """
    defaults = parts.settings.training
    names = parts.registry.names()
    with gr.Row():
        adapter = gr.Dropdown(
            choices=names, value=None, allow_custom_value=True, label="Adapter", elem_id="training-adapter", scale=2,
            info="An installed adapter gets its next version; type a new name (a-z, 0-9, '-', '_') to create one.",
        )
        max_steps = gr.Number(
            value=defaults.max_steps, minimum=1, precision=0, label="Max steps", elem_id="training-max-steps",
            info="Optimizer steps of the run: a few seconds each for the 135M default on two CPU cores, far less on a GPU.",
        )
    with gr.Row():
        log_adapter = gr.Dropdown(
            choices=[THIS_ADAPTER, "base", "any", *names], value=THIS_ADAPTER, allow_custom_value=True,
            label="Logged turns of", elem_id="training-log-adapter",
            info="Turns answered by the adapter being trained, by the base model ('base'), or by anyone ('any').",
        )
        rating = gr.Radio(
            choices=["up", "down", "any"], value="up", label="Rating", elem_id="training-rating",
            info="The latest rating a logged turn must carry.",
        )
        corrections = gr.Checkbox(
            value=True, label="Include corrected turns", elem_id="training-corrections",
            info="Corrected turns count whatever their rating; the correction becomes the answer.",
        )
    with gr.Row():
        since = gr.Textbox(
            label="Since", placeholder="2025-01-31", elem_id="training-since",
            info="Logged turns from this ISO date or time on; empty for no limit.",
        )
        until = gr.Textbox(
            label="Until", placeholder="2025-12-31", elem_id="training-until",
            info="Logged turns before this ISO date or time; empty for no limit.",
        )
        min_chars = gr.Number(
            value=defaults.min_answer_chars, minimum=0, precision=0, label="Shortest answer (characters)",
            elem_id="training-min-chars", info="Turns whose answer is shorter are dropped.",
        )
    with gr.Row():
        sources = gr.Checkbox(
            value=True, label="Train with the sources", elem_id="training-sources",
            info="Keep the retrieved sources in the prompt, as served, so the adapter learns to answer from them.",
        )
        golden = gr.Textbox(
            label="Golden set (optional)", placeholder="/path/on/the/server/golden.jsonl", elem_id="training-golden",
            info="A JSONL file on the server; the candidate and the live version are scored on it.",
        )
        force = gr.Checkbox(
            value=False, label="Deploy even if the gate rejects it", elem_id="training-force",
            info="Installs the candidate whatever the evaluation says; recorded in its manifest.",
        )
    fields = [adapter, log_adapter, rating, corrections, since, until, min_chars, sources, max_steps, golden, force]
    with gr.Row():
        preview_button = gr.Button("Preview dataset", elem_id="training-preview-button")
        start_button = gr.Button("Start training", variant="primary", elem_id="training-start")
        rollback_button = gr.Button("Roll back", variant="stop", elem_id="training-rollback")
    preview_view = gr.Markdown(elem_id="training-preview")
    status_view = gr.Markdown(elem_id="training-status")
    plot = gr.LinePlot(
        loss_frame({}), x="step", y="loss", label="Training loss", x_title="step", y_title="loss",
        y_axis_format=".3f", height=260, elem_id="training-loss",
    )
    report_view = gr.Markdown(elem_id="training-report")
    rollback_view = gr.Markdown(elem_id="training-rollback-status")
    run_id = gr.State(None)
    timer = gr.Timer(POLL_SECONDS, active=False)

    def run_view(status: dict[str, Any]) -> tuple:
        """Status, loss plot and report of a run; the timer keeps polling only while the run is active."""
        active = status["state"] in ACTIVE_STATES
        return run_markdown(status), loss_frame(status), report_markdown(status["report"]), gr.Timer(active=active)

    @_user_errors
    def preview(key: str, *values: Any) -> str:
        require(key)
        from training.request import parse_request
        from training.train import preview_dataset  # training imports are heavy: load them on first use

        request = parse_request(train_request(values))
        return dataset_markdown(preview_dataset(request, settings=parts.settings, registry=parts.registry, log=parts.log))

    @_user_errors
    def start(key: str, *values: Any) -> tuple:
        require(key)
        started = parts.training_runs.start(train_request(values))
        return (started, *run_view(parts.training_runs.status(started)))

    @_user_errors
    def poll(key: str, current: str) -> tuple:
        require(key)
        return run_view(parts.training_runs.status(current))

    @_user_errors
    def rollback(key: str, name: str | None) -> str:
        require(key)
        name = (name or "").strip()
        if not name:
            raise gr.Error("Choose the adapter to roll back.")
        manifest = admin.rollback_adapter(name)
        return f"**{plain(name)}** serves v{manifest.version} again."

    def refresh_names() -> tuple:
        """Adapters installed since the page loaded (by a run, an upload, the CLI) show up when the tab opens."""
        current = parts.registry.names()
        return gr.update(choices=current), gr.update(choices=[THIS_ADAPTER, "base", "any", *current])

    views = [status_view, plot, report_view, timer]
    preview_button.click(preview, [token, *fields], [preview_view], **PRIVATE)
    start_button.click(start, [token, *fields], [run_id, *views], **PRIVATE)
    timer.tick(poll, [token, run_id], views, **PRIVATE)
    rollback_button.click(rollback, [token, adapter], [rollback_view], **PRIVATE)
    tab.select(refresh_names, None, [adapter, log_adapter], **PRIVATE)
