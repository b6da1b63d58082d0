"""The Knowledge tab: upload documents into a collection, list and remove them, try a search."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from bot.admin import Admin
from bot.ui.guard import PRIVATE, AdminToken, user_errors
from bot.ui.views import ingest_markdown


class Knowledge:
    def __init__(self, admin: Admin, token: AdminToken) -> None:
        self.admin = admin
        self.token = token

    def build(self) -> None:
        token = self.token.box("knowledge-token")
        with gr.Row():
            collection = gr.Dropdown(
                choices=self.collection_names(), allow_custom_value=True, label="Collection", scale=3,
                elem_id="knowledge-collection",
            )
            refresh = gr.Button("Show documents", scale=1)
        files = gr.File(
            label="Documents (.txt .md .html .pdf .docx .csv .jsonl)", file_count="multiple", elem_id="knowledge-files"
        )
        replace = gr.Checkbox(
            False,
            label="Replace documents of the same name",
            info="Off: a file whose name a different document already has is skipped, and you are told.",
            elem_id="knowledge-replace",
        )
        upload = gr.Button("Upload into collection", variant="primary")
        status = gr.Markdown(elem_id="knowledge-status")
        table = gr.Dataframe(
            headers=["source", "chunks", "ingested"], label="Documents", interactive=False, elem_id="knowledge-table"
        )
        with gr.Row():
            source = gr.Dropdown(label="Document", choices=[], scale=3, elem_id="knowledge-source")
            remove = gr.Button("Remove document", variant="stop", scale=1)
        with gr.Row():
            query = gr.Textbox(label="Try a search", scale=3)
            search = gr.Button("Search", scale=1)
        results = gr.Dataframe(headers=["source", "section", "score", "text"], label="Results", interactive=False)

        listing = [table, source]
        upload.click(self.ingest, [token, collection, files, replace], [status, *listing, collection], **PRIVATE)
        refresh.click(self.documents, [token, collection], listing, **PRIVATE)
        collection.change(self.documents, [token, collection], listing, **PRIVATE)
        remove.click(self.remove, [token, collection, source], [status, *listing], **PRIVATE)
        search.click(self.search, [token, collection, query], [results], **PRIVATE)

    def collection_names(self) -> list[str]:
        return [c["name"] for c in self.admin.collections()]

    @user_errors
    def ingest(
        self, token: str, collection: str, files: list[str] | None, replace: bool, progress=gr.Progress(track_tqdm=True)
    ) -> tuple:
        self.token.check(token)
        collection = (collection or "").strip()
        if not collection:
            raise gr.Error("Name a collection.")
        if not files:
            raise gr.Error("Choose the documents to upload.")
        report = self.admin.ingest([(Path(f).name, Path(f)) for f in files], collection, progress=True, replace=replace)
        return (
            ingest_markdown(report, collection), *self.documents(token, collection),
            gr.update(choices=self.collection_names()),
        )

    @user_errors
    def documents(self, token: str, collection: str) -> tuple:
        self.token.check(token)
        if not collection or collection not in self.collection_names():
            return [], gr.update(choices=[], value=None)
        rows = self.admin.documents(collection)
        table = [[r["source"], r["chunks"], r["ingested_at"]] for r in rows]
        return table, gr.update(choices=[r["source"] for r in rows], value=None)

    @user_errors
    def remove(self, token: str, collection: str, source: str | None) -> tuple:
        self.token.check(token)
        if not source:
            raise gr.Error("Choose a document to remove.")
        removed = self.admin.remove_document(source, collection)
        return (f"Removed **{source}** ({removed['chunks']} chunks) from {collection}.", *self.documents(token, collection))

    @user_errors
    def search(self, token: str, collection: str, query: str) -> list[list]:
        self.token.check(token)
        passages = self.admin.search(query or "", [collection] if collection else [])
        return [[p.source, p.section, round(p.score, 3), p.text[:300]] for p in passages]
