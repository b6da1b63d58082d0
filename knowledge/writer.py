"""Writing a collection: documents in (read, chunked, embedded, stored in Chroma) and out, then the new lexical index.

Each change first records a fresh state token in Chroma, then writes, then
publishes the lexical index built with that token: a crash between the two
leaves an index whose token no longer matches, which the next reader rebuilds.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.errors import ConfigError, NotFoundError, UnavailableError
from core.sections import KnowledgeConfig
from knowledge.chunking import Chunker
from knowledge.collections import Collections
from knowledge.indexes import LexicalIndexes
from knowledge.ingest import (
    PIPELINE_VERSION,
    IngestReport,
    PreparedDocument,
    chunk_id,
    expand,
    name_taken,
    name_taken_reason,
    origin_of,
    prepare,
    read,
)
from knowledge.lexical import DocumentRecord, LexicalIndex
from knowledge.loaders import UnreadableDocument, load_document
from knowledge.store import check_collection_name

if TYPE_CHECKING:
    from knowledge.embeddings import Encoder

EMBED_BATCH = 64  # small enough that queries from chats get the shared encoder between batches
WRITE_GROUP_CHUNKS = 1024  # chunks embedded and written to Chroma together


class Writer:
    """Adds, replaces and removes the documents of a knowledge base's collections, one change at a time."""

    def __init__(
        self, config: KnowledgeConfig, encoder: "Encoder", collections: Collections, indexes: LexicalIndexes
    ) -> None:
        self._config = config
        self._encoder = encoder
        self._collections = collections
        self._indexes = indexes
        self._mutex = threading.RLock()
        self._chunker: Chunker | None = None

    @property
    def chunker(self) -> Chunker:
        """Chunks sized in the encoder's own tokens; built on first use, as reading needs no tokenizer."""
        if self._chunker is None:
            tokenizer = getattr(self._encoder, "tokenizer", None)
            if tokenizer is None:
                raise ConfigError("the encoder has no tokenizer to size chunks with")
            max_tokens = int(getattr(self._encoder, "max_tokens", self._config.chunk_tokens))
            self._chunker = Chunker(tokenizer, self._config.chunk_tokens, self._config.chunk_overlap, max_tokens)
        return self._chunker

    def ingest(
        self, paths: list[Path], collection: str, progress: bool, replace: bool, uploaded: bool
    ) -> IngestReport:
        """See :meth:`knowledge.knowledge_base.KnowledgeBase.ingest`."""
        check_collection_name(collection)
        report = IngestReport(collection)
        with self._mutex:
            chroma = self._collections.get(collection, fresh=True)
            if chroma is not None:
                self._collections.check_model(collection, chroma)
            index = self._indexes.get(collection, chroma, wait=True) if chroma is not None else LexicalIndex.empty()
            prepared = self._prepare(expand(paths, report), index, report, progress, replace, uploaded)
            if not prepared:
                return report
            chroma = chroma or self._collections.create(collection)
            state = self._collections.new_state(chroma)
            with _bar(progress, total=sum(len(d.chunks) for d in prepared), desc="embedding", unit="chunk") as bar:
                written = self._store_documents(chroma, collection, prepared, report, bar)
            report.documents = len(written)
            report.chunks = sum(len(texts) for _, texts in written)
            self._settle(collection, chroma, index.with_changes(set(), written, state))
        return report

    def remove(self, source: str, collection: str) -> dict:
        """See :meth:`knowledge.knowledge_base.KnowledgeBase.remove`."""
        store = self._collections.store
        with self._mutex:
            chroma = self._collections.require(collection, fresh=True)
            ids = store.ids_of(chroma, [source])
            if not ids:
                raise NotFoundError(f"no document '{source}' in collection '{collection}'")
            index = self._indexes.get(collection, chroma, wait=True)
            state = self._collections.new_state(chroma)
            store.delete(chroma, ids)
            self._settle(collection, chroma, index.with_changes({source}, [], state))
        return {"collection": collection, "source": source, "chunks": len(ids)}

    def _settle(self, collection: str, chroma, changed: LexicalIndex) -> None:
        """The lexical index after a change. The writer lock's holder knows its change is the only one and
        publishes the index it derived. On a Chroma server another replica may have written beside it: the
        change gets a new state token once written (every replica's index is stale then, and the one that
        notices first rebuilds from the store, which holds both changes), and this one rebuilds now."""
        if self._collections.trusted:
            self._indexes.publish(collection, changed)
            return
        self._collections.new_state(chroma)
        self._indexes.get(collection, chroma, wait=True)

    def _prepare(
        self, files: list[Path], index: LexicalIndex, report: IngestReport, progress: bool, replace: bool, uploaded: bool
    ) -> list[PreparedDocument]:
        config = self._config
        fingerprint = f"{self._collections.model_name}|{config.chunk_tokens}|{config.chunk_overlap}|{PIPELINE_VERSION}"
        prepared = []
        for path in _bar(progress, iterable=files, desc="reading", unit="file"):
            try:
                data, doc_hash = read(path, config.max_file_bytes, fingerprint)
                record = index.documents.get(path.name)
                if record is not None and record.doc_hash == doc_hash:
                    report.unchanged.append(path.name)
                    continue
                origin = origin_of(path, uploaded)
                if record is not None and not replace and name_taken(record.origin, origin):
                    report.skip(path, name_taken_reason(path.name, record, uploaded))
                    continue
                document = load_document(data, path.name, config.max_unpacked_bytes)  # before the chunker
                prepared.append(prepare(path, document, doc_hash, self.chunker, origin))
            except UnreadableDocument as exc:
                report.skip(path, str(exc))
        return prepared

    def _store_documents(
        self, chroma, collection: str, prepared: list[PreparedDocument], report: IngestReport, bar
    ) -> list[tuple[DocumentRecord, list[str]]]:
        """Embed and write documents a group at a time (Chroma writes far faster in bulk).

        A group that fails is rolled back and retried one document at a time,
        so a failure costs exactly the documents that cannot be stored.
        """
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        written = []
        for group in _groups(prepared, WRITE_GROUP_CHUNKS):
            rows = [_Rows.of(document, collection, now) for document in group]
            self._embed(rows, bar)
            try:
                self._replace(chroma, rows)
                written.extend((row.record, row.searchable) for row in rows)
                continue
            except UnavailableError:
                raise  # the store is down, not refusing these documents: the whole ingest is a 503
            except Exception as exc:  # the store refused the group; it was rolled back
                if len(rows) == 1:
                    report.skip(rows[0].document.path, _store_failure(exc))
                    continue
            for row in rows:
                try:
                    self._replace(chroma, [row])
                except UnavailableError:
                    raise
                except Exception as exc:  # the store refused this document; it was rolled back
                    report.skip(row.document.path, _store_failure(exc))
                    continue
                written.append((row.record, row.searchable))
        return written

    def _embed(self, rows: list["_Rows"], bar) -> None:
        """Give each document its embeddings, computed for the whole group a batch at a time."""
        searchable = [text for row in rows for text in row.searchable]
        vectors = []
        for start in range(0, len(searchable), EMBED_BATCH):
            vectors.append(self._encoder(searchable[start : start + EMBED_BATCH]))
            bar.update(len(vectors[-1]))
        matrix = np.concatenate(vectors)
        offsets = np.cumsum([0] + [len(row.ids) for row in rows])
        for row, start, end in zip(rows, offsets, offsets[1:]):
            row.vectors = matrix[start:end]

    def _replace(self, chroma, rows: list["_Rows"]) -> None:
        """Write the documents' chunks, then drop their old ones; on failure remove what was added."""
        store = self._collections.store
        old = set(store.ids_of(chroma, [row.document.source for row in rows]))
        ids = [i for row in rows for i in row.ids]
        try:
            store.write(
                chroma,
                ids,
                np.concatenate([row.vectors for row in rows]),
                [t for row in rows for t in row.texts],
                [m for row in rows for m in row.metadatas],
            )
            store.delete(chroma, sorted(old - set(ids)))
        except Exception:
            with contextlib.suppress(Exception):  # best effort: the original error is the one to report
                store.delete(chroma, [i for i in ids if i not in old])
            raise


@dataclass
class _Rows:
    """One document as Chroma rows: ids, texts, metadata, and its embeddings once computed."""

    document: PreparedDocument
    record: DocumentRecord
    ids: list[str]
    texts: list[str]
    searchable: list[str]
    metadatas: list[dict]
    vectors: np.ndarray | None = None

    @classmethod
    def of(cls, document: PreparedDocument, collection: str, now: str) -> "_Rows":
        searchable = [chunk.searchable for chunk in document.chunks]
        ids = [chunk_id(collection, document.source, i, text) for i, text in enumerate(searchable)]
        metadatas = []
        for i, chunk in enumerate(document.chunks):
            meta = {
                "source": document.source,
                "title": document.title,
                "section": chunk.section,
                "collection": collection,
                "ingested_at": now,
                "doc_hash": document.doc_hash,
                "chunk_index": i,
                "origin": document.origin,
            }
            optional = (("context", chunk.context or None), ("page", chunk.page), ("article", chunk.article))
            meta.update({key: value for key, value in optional if value is not None})
            metadatas.append(meta)
        record = DocumentRecord(document.source, document.title, document.doc_hash, now, tuple(ids), document.origin)
        return cls(document, record, ids, [chunk.text for chunk in document.chunks], searchable, metadatas)


def _store_failure(exc: Exception) -> str:
    return f"could not be stored ({type(exc).__name__}: {exc})"


def _groups(documents: list[PreparedDocument], max_chunks: int):
    group, size = [], 0
    for document in documents:
        if group and size + len(document.chunks) > max_chunks:
            yield group
            group, size = [], 0
        group.append(document)
        size += len(document.chunks)
    if group:
        yield group


def _bar(progress: bool, **kwargs):
    from tqdm import tqdm

    return tqdm(disable=not progress, file=sys.stderr, leave=False, **kwargs)
