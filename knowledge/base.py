"""The knowledge base: ingest documents into collections, retrieve cited passages, list and remove.

One object owns one knowledge folder. A writer (the default) holds the
folder's :class:`~knowledge.store.WriterLock` from construction to
:meth:`KnowledgeBase.close`: the server keeps one for its whole life, so a
second process asking to write fails at once with a clear message. A
``read_only`` instance takes no lock and may search while a writer runs.

Chroma is the source of truth; the lexical index is derived from it and
checked against it (see :mod:`knowledge.lexical`) whenever it is read from
disk or, for instances that do not hold the lock, before every use.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.errors import ConfigError, InvalidRequestError, NotFoundError, SwitchboardError
from knowledge.chunking import Chunker, searchable_text
from knowledge.embeddings import canonical_model_name
from knowledge.ingest import (
    PIPELINE_VERSION,
    UPLOAD,
    IngestReport,
    PreparedDocument,
    chunk_id,
    expand,
    name_taken,
    origin_of,
    prepare,
    read,
)
from knowledge.lexical import DocumentRecord, LexicalIndex
from knowledge.loaders import UnreadableDocument, load_document
from knowledge.passage import Passage
from knowledge.retrieval import Mode, Target, hybrid_search
from knowledge.store import MODEL_KEY, STATE_KEY, ChromaStore, WriterLock, check_collection_name

if TYPE_CHECKING:
    from core.settings import Settings
    from knowledge.embeddings import Encoder

EMBED_BATCH = 64  # small enough that queries from chats get the shared encoder between batches
WRITE_GROUP_CHUNKS = 1024  # chunks embedded and written to Chroma together
MAX_UNKNOWN_SHARE = 0.2  # above this share of [UNK] tokens the encoder cannot read the query


class KnowledgeBase:
    """Documents → chunks → embeddings in Chroma collections; hybrid retrieval with citations."""

    def __init__(self, settings: "Settings", encoder: "Encoder", read_only: bool = False) -> None:
        self.settings = settings
        self.config = settings.knowledge
        self.read_only = read_only
        self._encoder = encoder
        self._model_name = canonical_model_name(str(getattr(encoder, "model_name", settings.embedding_model)))
        self._folder = Path(settings.chroma_dir)
        self._lock = None if read_only or self.config.chroma_url else WriterLock(self._folder)
        try:
            self._store = ChromaStore(self._folder, self.config.chroma_url)
        except BaseException:
            self.close()
            raise
        self._indexes: dict[str, LexicalIndex] = {}
        self._collections: dict[str, object] = {}
        self._write_mutex = threading.RLock()
        self._load_mutex = threading.RLock()
        self._chunker: Chunker | None = None

    def __enter__(self) -> "KnowledgeBase":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Release the writer lock; the instance must not be used afterwards."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @property
    def _trusted(self) -> bool:
        """Only the lock holder knows nobody else writes, so only it may trust what it holds in memory."""
        return self._lock is not None

    # ---- writing

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
        check_collection_name(collection)
        report = IngestReport(collection)
        with self._write_mutex:
            chroma = self._chroma(collection)
            if chroma is not None:
                self._check_model(collection, chroma)
            index = self._index(collection, chroma) if chroma is not None else LexicalIndex.empty()
            prepared = self._prepare(expand(paths, report), index, report, progress, replace, uploaded)
            if not prepared:
                return report
            chroma = chroma or self._create(collection)
            state = uuid.uuid4().hex
            self._store.set_state(chroma, state, self._model_name)
            with _bar(progress, total=sum(len(d.chunks) for d in prepared), desc="embedding", unit="chunk") as bar:
                written = self._store_documents(chroma, collection, prepared, report, bar)
            report.documents = len(written)
            report.chunks = sum(len(texts) for _, texts in written)
            self._publish(collection, index.with_changes(set(), written, state))
        return report

    def remove(self, source: str, collection: str) -> dict:
        """Delete one document's chunks; returns {collection, source, chunks}."""
        self._require_writer()
        with self._write_mutex:
            chroma = self._require_collection(collection)
            ids = self._store.ids_of(chroma, [source])
            if not ids:
                raise NotFoundError(f"no document '{source}' in collection '{collection}'")
            index = self._index(collection, chroma)
            state = uuid.uuid4().hex
            self._store.set_state(chroma, state, self._model_name)
            self._store.delete(chroma, ids)
            self._publish(collection, index.with_changes({source}, [], state))
        return {"collection": collection, "source": source, "chunks": len(ids)}

    def _prepare(
        self, files: list[Path], index: LexicalIndex, report: IngestReport, progress: bool, replace: bool, uploaded: bool
    ) -> list[PreparedDocument]:
        fingerprint = f"{self._model_name}|{self.config.chunk_tokens}|{self.config.chunk_overlap}|{PIPELINE_VERSION}"
        prepared = []
        for path in _bar(progress, iterable=files, desc="reading", unit="file"):
            try:
                data, doc_hash = read(path, self.config.max_file_bytes, fingerprint)
                record = index.documents.get(path.name)
                if record is not None and record.doc_hash == doc_hash:
                    report.unchanged.append(path.name)
                    continue
                origin = origin_of(path, uploaded)
                if record is not None and not replace and name_taken(record.origin, origin):
                    report.skip(path, _name_taken_reason(path.name, index.documents[path.name], uploaded))
                    continue
                document = load_document(data, path.name, self.config.max_unpacked_bytes)  # before the chunker
                prepared.append(prepare(path, document, doc_hash, self._get_chunker(), origin))
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
            searchable = [text for row in rows for text in row.searchable]
            vectors = []
            for start in range(0, len(searchable), EMBED_BATCH):
                vectors.append(self._encoder(searchable[start : start + EMBED_BATCH]))
                bar.update(len(vectors[-1]))
            matrix = np.concatenate(vectors)
            offsets = np.cumsum([0] + [len(row.ids) for row in rows])
            for row, start, end in zip(rows, offsets, offsets[1:]):
                row.vectors = matrix[start:end]
            try:
                self._replace(chroma, rows)
                written.extend((row.record, row.searchable) for row in rows)
                continue
            except Exception as exc:  # the store refused the group; it was rolled back
                if len(rows) == 1:
                    report.skip(rows[0].document.path, _store_failure(exc))
                    continue
            for row in rows:
                try:
                    self._replace(chroma, [row])
                except Exception as exc:  # the store refused this document; it was rolled back
                    report.skip(row.document.path, _store_failure(exc))
                    continue
                written.append((row.record, row.searchable))
        return written

    def _replace(self, chroma, rows: list["_Rows"]) -> None:
        """Write the documents' chunks, then drop their old ones; on failure remove what was added."""
        old = set(self._store.ids_of(chroma, [row.document.source for row in rows]))
        ids = [i for row in rows for i in row.ids]
        try:
            self._store.write(
                chroma,
                ids,
                np.concatenate([row.vectors for row in rows]),
                [t for row in rows for t in row.texts],
                [m for row in rows for m in row.metadatas],
            )
            self._store.delete(chroma, sorted(old - set(ids)))
        except Exception:
            with contextlib.suppress(Exception):  # best effort: the original error is the one to report
                self._store.delete(chroma, [i for i in ids if i not in old])
            raise

    def _publish(self, collection: str, index: LexicalIndex) -> None:
        """Build, save, then swap in: readers use the previous index until the new one is complete."""
        index.warm()
        index.save(self._lexical_folder(collection))
        with self._load_mutex:
            self._indexes[collection] = index

    # ---- reading

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
            chroma = self._require_collection(name) if strict else self._chroma(name)
            if chroma is not None:
                self._check_model(name, chroma)
                targets.append(Target(name, chroma, self._index(name, chroma)))
        if not targets:
            return []
        if mode == "hybrid" and not self._encoder_reads(text):
            mode = "lexical"
        if mode == "lexical":
            vector = None
        elif vector is None:
            vector = self._encoder([text])[0]
        return hybrid_search(self._store, targets, text, vector, k, min_score, mode=mode, sources=sources)

    def _encoder_reads(self, text: str) -> bool:
        """Whether the embedding model knows most of the query's tokens.

        An English model such as all-MiniLM-L6-v2 maps most Chinese
        characters to [UNK]: its similarities are then noise (a weather
        question scores 0.48 against a refund policy), which would rank
        unrelated chunks and defeat the relevance threshold. Such queries are
        answered by the lexical side alone; a multilingual model passes.
        """
        tokenizer = getattr(self._encoder, "tokenizer", None)
        unknown = getattr(tokenizer, "unk_token", None)
        if unknown is None:
            return True
        tokens = tokenizer.tokenize(text[:2000])
        return not tokens or tokens.count(unknown) / len(tokens) <= MAX_UNKNOWN_SHARE

    def list_collections(self) -> list[dict]:
        """[{name, documents, chunks}] of every knowledge collection."""
        result = []
        for name in self._store.names():
            chroma = self._chroma(name)
            if chroma is not None:
                index = self._index(name, chroma)
                result.append({"name": name, "documents": len(index.documents), "chunks": len(index)})
        return result

    def list_documents(self, collection: str) -> list[dict]:
        """[{source, title, chunks, ingested_at}] of one collection, by source."""
        index = self._index(collection, self._require_collection(collection))
        return [
            {"source": r.source, "title": r.title, "chunks": len(r.chunk_ids), "ingested_at": r.ingested_at}
            for r in sorted(index.documents.values(), key=lambda r: r.source)
        ]

    # ---- collections and their lexical indexes

    def _chroma(self, name: str):
        if self._trusted and name in self._collections:
            return self._collections[name]
        chroma = self._store.collection(name)
        if chroma is not None and self._trusted:
            self._collections[name] = chroma
        return chroma

    def _create(self, name: str):
        chroma = self._store.collection(name, create=True)
        if self._trusted:
            self._collections[name] = chroma
        return chroma

    def _require_collection(self, name: str):
        chroma = self._chroma(name)
        if chroma is None:
            known = ", ".join(self._store.names()) or "none yet"
            raise NotFoundError(f"no knowledge collection '{name}' (collections: {known})")
        return chroma

    def _check_model(self, name: str, chroma) -> None:
        model = (chroma.metadata or {}).get(MODEL_KEY)
        if model and model != self._model_name:
            raise ConfigError(
                f"collection '{name}' was embedded with '{model}', not '{self._model_name}'; "
                "set embedding_model back or re-ingest it"
            )

    def _lexical_folder(self, name: str) -> Path:
        return self._folder / "lexical" / name

    def _index(self, name: str, chroma) -> LexicalIndex:
        """The collection's lexical index: from memory, from disk when current, else rebuilt from Chroma."""
        cached = self._indexes.get(name)
        if cached is not None and self._trusted:
            return cached
        state = (chroma.metadata or {}).get(STATE_KEY)
        with self._load_mutex:
            cached = self._indexes.get(name)
            if cached is not None and state is not None and cached.state == state:
                return cached
            saved = LexicalIndex.load(self._lexical_folder(name))
            if saved is not None and state is not None and saved.state == state:
                index = saved
            else:
                index = self._rebuild(name, chroma, state)
            self._indexes[name] = index
            return index

    def _rebuild(self, name: str, chroma, state: str | None) -> LexicalIndex:
        """Re-derive the lexical index from Chroma's chunks (after a crash, or on a fresh machine)."""
        documents: dict[str, list[tuple[int, str, str, dict]]] = {}
        for chunk_id_, text, meta in self._store.scan(chroma):
            searchable = searchable_text(text, str(meta.get("context", "")))
            documents.setdefault(meta["source"], []).append(
                (int(meta.get("chunk_index", 0)), chunk_id_, searchable, meta)
            )
        added = []
        for source, chunks in documents.items():
            chunks.sort(key=lambda c: c[0])
            first = chunks[0][3]
            record = DocumentRecord(
                source,
                str(first.get("title", "")),
                str(first.get("doc_hash", "")),
                str(first.get("ingested_at", "")),
                tuple(c[1] for c in chunks),
                str(first.get("origin", "")),
            )
            added.append((record, [c[2] for c in chunks]))
        if not self.read_only and state is None:
            state = uuid.uuid4().hex
            self._store.set_state(chroma, state, self._model_name)
        index = LexicalIndex.empty().with_changes(set(), added, state)
        if not self.read_only:
            index.save(self._lexical_folder(name))
        return index

    def _get_chunker(self) -> Chunker:
        if self._chunker is None:
            tokenizer = getattr(self._encoder, "tokenizer", None)
            if tokenizer is None:
                raise ConfigError("the encoder has no tokenizer to size chunks with")
            max_tokens = int(getattr(self._encoder, "max_tokens", self.config.chunk_tokens))
            self._chunker = Chunker(tokenizer, self.config.chunk_tokens, self.config.chunk_overlap, max_tokens)
        return self._chunker

    def _require_writer(self) -> None:
        if self.read_only:
            raise SwitchboardError("this knowledge base was opened read-only")


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


def _name_taken_reason(name: str, record: DocumentRecord, uploaded: bool) -> str:
    """Why a file of a taken name was skipped, and the three ways on; server paths are not shown."""
    where = "uploaded" if record.origin == UPLOAD else "ingested from another folder"
    flag = "ask to replace it ('Replace documents of the same name' in the UI, replace=true in the upload form)"
    if not uploaded:
        flag = "pass --replace to replace it"
    return (
        f"a different document named '{name}' is already in the collection ({where} {record.ingested_at}); "
        f"rename this file to keep both, remove the old one first, or {flag}"
    )


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
