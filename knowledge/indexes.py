"""The lexical (BM25) index of each collection: in memory, saved beside Chroma, rebuilt from it when stale.

Chroma is the source of truth; a lexical index is derived from it and carries
the state token Chroma held when it was built (see :mod:`knowledge.lexical`).
An index read from disk, or held by an instance that does not hold the writer
lock, is used only while its token matches Chroma's; otherwise it is rebuilt
from Chroma's chunks (after a crash, on a fresh machine, or after another
replica changed the collection on a shared Chroma server).

The token is read before the chunks, and a writer without the lock records
a fresh one after its writes (:meth:`knowledge.writer.Writer._settle`), so an
index built from a scan that raced a write is labelled with a token that is
already stale, and is rebuilt at the next check.
One thread rebuilds a collection at a time; queries meanwhile keep the
previous, complete index, and wait only when there is none yet.
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
        self._builds: dict[str, threading.Lock] = {}  # one rebuild at a time per collection
        self._mutex = threading.Lock()

    def get(self, name: str, chroma, *, wait: bool = False) -> LexicalIndex:
        """The index matching ``chroma``'s state token: from memory, from disk, else rebuilt from Chroma.

        While another thread rebuilds this collection the previous index is
        returned, unless ``wait``: a writer waits, so that what it just wrote
        is searchable when it returns.
        """
        cached = self._indexes.get(name)
        if cached is not None and self._collections.trusted:
            return cached
        state = (chroma.metadata or {}).get(STATE_KEY)
        if cached is not None and state is not None and cached.state == state:
            return cached
        build = self._build_lock(name)
        if not build.acquire(blocking=wait or cached is None):
            return cached
        try:
            cached = self._indexes.get(name)
            if cached is not None and state is not None and cached.state == state:
                return cached  # built by the thread this one waited for
            saved = LexicalIndex.load(self._path(name))
            if saved is not None and state is not None and saved.state == state:
                index = saved
            else:
                index = self._rebuild(name, chroma, state)
            self._indexes[name] = index.warm()
            return index
        finally:
            build.release()

    def publish(self, name: str, index: LexicalIndex) -> None:
        """Build, save, then swap in: readers use the previous index until the new one is complete."""
        index.warm()
        index.save(self._path(name))
        with self._build_lock(name):  # after any rebuild from older contents, never before
            self._indexes[name] = index

    def _build_lock(self, name: str) -> threading.Lock:
        with self._mutex:
            return self._builds.setdefault(name, threading.Lock())

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
