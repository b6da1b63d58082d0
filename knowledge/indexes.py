"""The lexical (BM25) index of each collection: in memory, saved beside Chroma, rebuilt from it when stale.

Chroma is the source of truth; a lexical index is derived from it and carries
the state token Chroma held when it was built (see :mod:`knowledge.lexical`).
An index read from disk, or held by an instance that does not hold the writer
lock, is used only while its token matches Chroma's; otherwise it is rebuilt
from Chroma's chunks (after a crash, or on a fresh machine).
"""

from __future__ import annotations

import threading
from pathlib import Path

from knowledge.chunking import searchable_text
from knowledge.collections import Collections
from knowledge.lexical import DocumentRecord, LexicalIndex
from knowledge.store import STATE_KEY


class LexicalIndexes:
    """The lexical index of every collection of one knowledge folder."""

    def __init__(self, collections: Collections, folder: Path, *, read_only: bool) -> None:
        self._collections = collections
        self._folder = folder
        self._read_only = read_only
        self._indexes: dict[str, LexicalIndex] = {}
        self._mutex = threading.RLock()

    def get(self, name: str, chroma) -> LexicalIndex:
        """The collection's lexical index: from memory, from disk when current, else rebuilt from Chroma."""
        cached = self._indexes.get(name)
        if cached is not None and self._collections.trusted:
            return cached
        state = (chroma.metadata or {}).get(STATE_KEY)
        with self._mutex:
            cached = self._indexes.get(name)
            if cached is not None and state is not None and cached.state == state:
                return cached
            saved = LexicalIndex.load(self._path(name))
            if saved is not None and state is not None and saved.state == state:
                index = saved
            else:
                index = self._rebuild(name, chroma, state)
            self._indexes[name] = index
            return index

    def publish(self, name: str, index: LexicalIndex) -> None:
        """Build, save, then swap in: readers use the previous index until the new one is complete."""
        index.warm()
        index.save(self._path(name))
        with self._mutex:
            self._indexes[name] = index

    def _path(self, name: str) -> Path:
        return self._folder / "lexical" / name

    def _rebuild(self, name: str, chroma, state: str | None) -> LexicalIndex:
        """Re-derive the lexical index from Chroma's chunks."""
        documents: dict[str, list[tuple[int, str, str, dict]]] = {}
        for chunk_id, text, meta in self._collections.store.scan(chroma):
            searchable = searchable_text(text, str(meta.get("context", "")))
            documents.setdefault(meta["source"], []).append(
                (int(meta.get("chunk_index", 0)), chunk_id, searchable, meta)
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
        if not self._read_only and state is None:
            state = self._collections.new_state(chroma)
        index = LexicalIndex.empty().with_changes(set(), added, state)
        if not self._read_only:
            index.save(self._path(name))
        return index
