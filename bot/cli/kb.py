"""``switchboard kb``: the knowledge base from the command line.

Writing commands (ingest, remove) take the knowledge folder's writer lock and
fail at once, naming the holder, while a server holds it; reading commands
(search, list) open it read-only and work beside a running server.
"""

from __future__ import annotations

from pathlib import Path

import typer

from bot.cli.output import HOME_OPTION, JSON_OPTION, emit, settings_from, table
from core.errors import InvalidRequestError

app = typer.Typer(
    help="Ingest documents into knowledge collections, search them, list and remove them.", no_args_is_help=True
)

COLLECTION_OPTION = typer.Option(..., "--collection", "-c", help="Knowledge collection (one knowledge domain).")


def _open(home: str | None, read_only: bool):
    from knowledge.embeddings import encoder_for
    from knowledge.knowledge_base import KnowledgeBase

    settings = settings_from(home)
    return KnowledgeBase(settings, encoder_for(settings), read_only=read_only)


@app.command()
def ingest(
    paths: list[Path] = typer.Argument(..., help="Files or folders (.txt .md .html .pdf .docx, FAQ .csv .jsonl)."),
    collection: str = COLLECTION_OPTION,
    replace: bool = typer.Option(
        False,
        "--replace",
        help="Replace a document of the same name that came from another folder (without it, such a file is skipped).",
    ),
    as_json: bool = JSON_OPTION,
    home: str = HOME_OPTION,
) -> None:
    """Add documents to a collection; a file ingested again from the same path replaces its chunks, an unchanged
    one is skipped, and a different file with a taken name is skipped with the reason."""
    with _open(home, read_only=False) as kb:
        report = kb.ingest(paths, collection, progress=True, replace=replace)
    lines = [f"ingested {report.documents} document(s), {report.chunks} chunk(s) into '{collection}'"]
    lines += [f"unchanged: {source}" for source in report.unchanged]
    lines += [f"skipped: {item['path']}: {item['reason']}" for item in report.skipped]
    emit(report.to_dict(), as_json, "\n".join(lines))
    if report.skipped and not report.documents and not report.unchanged:
        raise InvalidRequestError("no document could be ingested")


@app.command()
def search(
    query: str = typer.Argument(..., help="What to look for, in any language."),
    collection: list[str] = typer.Option(..., "--collection", "-c", help="Collection to search; repeat for several."),
    k: int = typer.Option(None, "--k", min=1, max=100, help="Passages to return (default knowledge.k)."),
    min_score: float = typer.Option(
        None,
        "--min-score",
        min=0.0,
        max=1.0,
        help="Relevance below which nothing is returned (default knowledge.min_score).",
    ),
    as_json: bool = JSON_OPTION,
    home: str = HOME_OPTION,
) -> None:
    """Hybrid (dense + BM25) search; every passage carries its source, section, chunk id and score."""
    with _open(home, read_only=True) as kb:
        passages = kb.search(query, collection, k=k, min_score=min_score)
    text = "\n\n".join(
        f"[{i}] {p.source}{f' ({p.section})' if p.section else ''}  score {p.score:.3f}  id {p.id}\n{p.text}"
        for i, p in enumerate(passages, start=1)
    )
    emit(
        [p.to_dict() for p in passages],
        as_json,
        text or "(nothing relevant: no passage reached the relevance threshold)",
    )


@app.command("list")
def list_(
    collection: str = typer.Option(None, "--collection", "-c", help="List the documents of this collection instead."),
    as_json: bool = JSON_OPTION,
    home: str = HOME_OPTION,
) -> None:
    """Collections with their document and chunk counts, or one collection's documents."""
    with _open(home, read_only=True) as kb:
        if collection:
            rows = kb.list_documents(collection)
            emit(rows, as_json, table(rows, ["source", "chunks", "ingested_at", "title"]))
        else:
            rows = kb.list_collections()
            emit(rows, as_json, table(rows, ["name", "documents", "chunks"]))


@app.command()
def remove(
    source: str = typer.Argument(..., help="The document's source (its file name as ingested)."),
    collection: str = COLLECTION_OPTION,
    as_json: bool = JSON_OPTION,
    home: str = HOME_OPTION,
) -> None:
    """Delete one document's chunks from a collection."""
    with _open(home, read_only=False) as kb:
        result = kb.remove(source, collection)
    emit(result, as_json, f"removed {result['source']} ({result['chunks']} chunks) from '{collection}'")
