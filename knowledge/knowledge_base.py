"""The knowledge base: ingest documents into collections, retrieve cited passages, list and remove.

One object owns one knowledge folder. A writer (the default) holds the
folder's :class:`~knowledge.store.WriterLock` from construction to
:meth:`KnowledgeBase.close`: the server keeps one for its whole life, so a
second process asking to write fails at once with a clear message. A
``read_only`` instance takes no lock and may search while a writer runs.

The work is done by parts, each in its own module: the Chroma collections
(:mod:`knowledge.collections`), their lexical indexes (:mod:`knowledge.indexes`),
the writer (:mod:`knowledge.writer`) and hybrid search
(:mod:`knowledge.retrieval`). Chroma is the source of truth; the lexical
index is derived from it and checked against it whenever it is read from
disk or, for instances that do not hold the lock, at most every
``knowledge.refresh_s`` seconds on a Chroma server (before every use otherwise).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from core.errors import InvalidRequestError, SwitchboardError
from knowledge.collections import Collections
from knowledge.embeddings import canonical_model_name
from knowledge.indexes import LexicalIndexes
from knowledge.ingest import IngestReport
from knowledge.passage import Passage
from knowledge.retrieval import Mode, Target, encoder_reads, hybrid_search
from knowledge.store import ChromaStore, WriterLock
from knowledge.writer import Writer

if TYPE_CHECKING:
    from core.settings import Settings
    from knowledge.embeddings import Encoder

Method = TypeVar("Method", bound=Callable[..., Any])


def _on_the_store(method: Method) -> Method:
    """A Chroma server that does not answer makes the call a 503 naming it (``ChromaStore.reachable``)."""

    @functools.wraps(method)
    def wrapper(self: "KnowledgeBase", *args, **kwargs):
        with self._collections.store.reachable():
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class KnowledgeBase:
    """Documents → chunks → embeddings in Chroma collections; hybrid retrieval with citations."""

    def __init__(self, settings: "Settings", encoder: "Encoder", read_only: bool = False) -> None:
        self.settings = settings
        self.config = settings.knowledge
        self.read_only = read_only
        folder = Path(settings.chroma_dir)
        self._lock = None if read_only or self.config.chroma_url else WriterLock(folder)
        try:
            store = ChromaStore(folder, self.config.chroma_url)
        except BaseException:
            self.close()
            raise
        model_name = canonical_model_name(str(getattr(encoder, "model_name", settings.embedding_model)))
        # Only the lock holder knows nobody else writes, so only it may trust what it holds in memory.
        self._collections = Collections(
            store, model_name, trusted=self._lock is not None, refresh_s=self.config.refresh_s if self.config.chroma_url else 0.0
        )
        self._indexes = LexicalIndexes(self._collections, folder, read_only=read_only)
        self._writer = Writer(self.config, encoder, self._collections, self._indexes)
        self._encoder = encoder

    def __enter__(self) -> "KnowledgeBase":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Release the writer lock; the instance must not be used afterwards."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def ping(self) -> float:
        """Milliseconds a heartbeat to the Chroma server (or the embedded store) takes; UnavailableError when
        the server does not answer (``/health``)."""
        return self._collections.store.ping()

    # ---- writing

    @_on_the_store
    def ingest(
        self,
        paths: list[Path],
        collection: str,
        progress: bool = False,
        *,
        replace: bool = False,
        uploaded: bool = False,
    ) -> IngestReport:
        """Add or replace documents; the source of each is its file name. Bad files land in ``skipped``.

        A file replaces the document of its name when it comes from the same
        path; a different file of that name (another folder, or any upload) is
        skipped with the reason, unless ``replace``. ``uploaded`` says the
        paths are staging copies whose origin is unknown.
        """
        self._require_writer()
        return self._writer.ingest(paths, collection, progress, replace, uploaded)

    @_on_the_store
    def remove(self, source: str, collection: str) -> dict:
        """Delete one document's chunks; returns {collection, source, chunks}."""
        self._require_writer()
        return self._writer.remove(source, collection)

    def _require_writer(self) -> None:
        if self.read_only:
            raise SwitchboardError("this knowledge base was opened read-only")

    # ---- reading

    @_on_the_store
    def retrieve(
        self,
        query: str,
        collections: list[str],
        k: int | None = None,
        min_score: float | None = None,
        *,
        mode: Mode = "hybrid",
        sources: list[str] | None = None,
        vector=None,
    ) -> list[Passage]:
        """The ``k`` most relevant passages above ``min_score``; an empty list means nothing relevant.

        Collections that do not exist (yet) are ignored, so an adapter can name
        a collection before anything is ingested into it. ``vector`` is the
        query's embedding when the caller has it already (the router embedded it).
        """
        return self._retrieve(query, collections, k, min_score, mode, sources, strict=False, vector=vector)

    @_on_the_store
    def search(
        self,
        query: str,
        collections: list[str],
        k: int | None = None,
        min_score: float | None = None,
        *,
        mode: Mode = "hybrid",
        sources: list[str] | None = None,
    ) -> list[Passage]:
        """:meth:`retrieve` for people: an empty query or an unknown collection is an error, not an empty list."""
        if not query.strip():
            raise InvalidRequestError("the query is empty")
        if not collections:
            raise InvalidRequestError("name at least one collection to search")
        return self._retrieve(query, collections, k, min_score, mode, sources, strict=True)

    def _retrieve(self, query, collections, k, min_score, mode, sources, strict: bool, vector=None) -> list[Passage]:
        k = self.config.k if k is None else k
        if k < 1:
            raise InvalidRequestError("k must be at least 1")
        min_score = self.config.min_score if min_score is None else min_score
        text = query.strip()
        if not text:
            return []
        targets = []
        for name in dict.fromkeys(collections):
            chroma = self._collections.require(name) if strict else self._collections.get(name)
            if chroma is not None:
                self._collections.check_model(name, chroma)
                targets.append(Target(name, chroma, self._indexes.get(name, chroma)))
        if not targets:
            return []
        if mode == "hybrid" and not encoder_reads(self._encoder, text):
            mode = "lexical"
        if mode == "lexical":
            vector = None
        elif vector is None:
            vector = self._encoder([text])[0]
        store = self._collections.store
        return hybrid_search(store, targets, text, vector, k, min_score, mode=mode, sources=sources)

    @_on_the_store
    def list_collections(self) -> list[dict]:
        """[{name, documents, chunks}] of every knowledge collection."""
        result = []
        for name in self._collections.names():
            chroma = self._collections.get(name)
            if chroma is not None:
                index = self._indexes.get(name, chroma)
                result.append({"name": name, "documents": len(index.documents), "chunks": len(index)})
        return result

    @_on_the_store
    def list_documents(self, collection: str) -> list[dict]:
        """[{source, title, chunks, ingested_at}] of one collection, by source."""
        index = self._indexes.get(collection, self._collections.require(collection))
        return [
            {"source": r.source, "title": r.title, "chunks": len(r.chunk_ids), "ingested_at": r.ingested_at}
            for r in sorted(index.documents.values(), key=lambda r: r.source)
        ]
