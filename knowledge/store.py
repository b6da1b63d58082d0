"""Chroma, embedded or remote, and the lock that keeps the embedded store to one writer.

Chroma's embedded store keeps its HNSW index in the memory of the process
that opened it and flushes it to files; two processes writing the same folder
overwrite each other's index files. :class:`WriterLock` makes the second
writer fail at once with a message that names the holder, instead of
corrupting the store or hanging. Against a Chroma server (``chroma_url``) the
server arbitrates and no lock is taken.

Collections are stored as ``kb_<name>`` with cosine distance and no Chroma
embedding function: embeddings always come from our encoder, so Chroma never
tries to download its default model.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from core.errors import ConfigError, InvalidRequestError, LockedError, UnavailableError

PREFIX = "kb_"
STATE_KEY = "lexical_state"
MODEL_KEY = "embedding_model"
_MARKER = {"switchboard": "knowledge"}
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?$")
_PAGE = 5000
RETRY_AFTER_S = 5.0


def check_collection_name(name: str) -> str:
    if not _NAME.match(name or "") or ".." in name:
        raise InvalidRequestError(
            f"invalid collection name {name!r}: use 1-100 letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return name


class WriterLock:
    """An exclusive, non-blocking lock on the knowledge folder, held for the life of the writer."""

    def __init__(self, folder: Path) -> None:
        from filelock import FileLock, Timeout

        folder.mkdir(parents=True, exist_ok=True)
        self._pid_file = folder / "writer.pid"
        self._lock = FileLock(str(folder / "writer.lock"), thread_local=False)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise LockedError(
                f"the knowledge base is in use by another process{self._holder()}; "
                "stop it or upload through the server's admin API"
            ) from None
        self._pid_file.write_text(str(os.getpid()), encoding="utf-8")

    def _holder(self) -> str:
        try:
            return f" (pid {int(self._pid_file.read_text(encoding='utf-8').strip())})"
        except (OSError, ValueError):
            return ""

    def release(self) -> None:
        if self._lock.is_locked:
            self._pid_file.unlink(missing_ok=True)
            self._lock.release(force=True)


class ChromaStore:
    """The chunks of every knowledge collection in Chroma; the one place that speaks Chroma's API."""

    def __init__(self, folder: Path, url: str | None = None) -> None:
        if url:
            parsed = urlparse(url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ConfigError(f"knowledge.chroma_url {url!r} is not an http(s) URL")
        self.remote = bool(url)
        self.url = url
        self._folder = folder
        self._client = None
        self._batch = _PAGE

    @property
    def client(self):
        """The chromadb client, made on first use: a replica that starts while the server is down serves
        everything else, answers 503 for knowledge, and connects once the server is back."""
        if self._client is None:
            import chromadb
            from chromadb.config import Settings as ChromaSettings

            chroma_settings = ChromaSettings(anonymized_telemetry=False)
            if self.url:
                parsed = urlparse(self.url)
                with self.reachable():
                    client = chromadb.HttpClient(
                        host=parsed.hostname,
                        port=parsed.port or (443 if parsed.scheme == "https" else 80),
                        ssl=parsed.scheme == "https",
                        settings=chroma_settings,
                    )
            else:
                self._folder.mkdir(parents=True, exist_ok=True)
                client = chromadb.PersistentClient(str(self._folder), settings=chroma_settings)
            self._batch = min(client.get_max_batch_size(), _PAGE)
            self._client = client
        return self._client

    @contextmanager
    def reachable(self) -> Iterator[None]:
        """A Chroma server that does not answer fails the request with a 503 naming it, never a traceback;
        the client connects again by itself once the server is back."""
        import httpx

        try:
            yield
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from exc
        except ValueError as exc:  # how chromadb's client reports a refused connection when it is made
            if not isinstance(exc.__context__, httpx.TransportError):
                raise
            raise self._unavailable(exc.__context__) from exc

    def _unavailable(self, exc: Exception) -> UnavailableError:
        return UnavailableError(
            f"the Chroma server at {self.url} does not answer ({type(exc).__name__}); try again shortly",
            retry_after=RETRY_AFTER_S,
        )

    def ping(self) -> float:
        """Milliseconds a heartbeat takes; UnavailableError when the server does not answer."""
        start = time.perf_counter()
        with self.reachable():
            self.client.heartbeat()
        return (time.perf_counter() - start) * 1000.0

    def names(self) -> list[str]:
        names = []
        for collection in self.client.list_collections():
            name = collection if isinstance(collection, str) else collection.name
            if name.startswith(PREFIX):
                names.append(name[len(PREFIX) :])
        return sorted(names)

    def collection(self, name: str, create: bool = False):
        """The Chroma collection of ``name``, or None when it does not exist and ``create`` is off."""
        from chromadb.errors import NotFoundError as ChromaNotFound

        if create:
            return self.client.get_or_create_collection(
                PREFIX + name,
                embedding_function=None,
                configuration={"hnsw": {"space": "cosine"}},
                metadata=dict(_MARKER),
            )
        try:
            return self.client.get_collection(PREFIX + name, embedding_function=None)
        except (ChromaNotFound, ValueError):
            return None

    def state(self, name: str) -> str | None:
        collection = self.collection(name)
        return (collection.metadata or {}).get(STATE_KEY) if collection is not None else None

    def set_state(self, collection, state: str, model: str) -> None:
        """Record a change about to happen, and the model whose embeddings the collection holds."""
        collection.modify(metadata={**_MARKER, STATE_KEY: state, MODEL_KEY: model})

    def ids_of(self, collection, sources: list[str]) -> list[str]:
        """Ids of every chunk of these documents."""
        with self.reachable():  # here too: a writer tells an outage from a document the store refuses
            return collection.get(where={"source": {"$in": sources}}, include=[])["ids"]

    def write(self, collection, ids: list[str], vectors: np.ndarray, texts: list[str], metadatas: list[dict]) -> None:
        for start in range(0, len(ids), self._batch):
            end = start + self._batch
            with self.reachable():
                collection.upsert(
                    ids=ids[start:end],
                    embeddings=vectors[start:end],
                    documents=texts[start:end],
                    metadatas=metadatas[start:end],
                )

    def delete(self, collection, ids: list[str]) -> None:
        for start in range(0, len(ids), self._batch):
            with self.reachable():
                collection.delete(ids=ids[start : start + self._batch])

    def query(self, collection, vector: np.ndarray, n: int, where: dict | None) -> list[tuple[str, float, str, dict]]:
        """Nearest chunks as (id, cosine similarity, text, metadata), best first."""
        result = collection.query(
            query_embeddings=vector.reshape(1, -1),
            n_results=n,
            where=where,
            include=["distances", "documents", "metadatas"],
        )
        return [
            (i, 1.0 - float(d), t, m)
            for i, d, t, m in zip(
                result["ids"][0], result["distances"][0], result["documents"][0], result["metadatas"][0]
            )
        ]

    def fetch(self, collection, ids: list[str] | None = None, where: dict | None = None, embeddings: bool = False):
        """Chunks by id or metadata filter as {id: (text, metadata, embedding or None)}."""
        include = ["documents", "metadatas"] + (["embeddings"] if embeddings else [])
        result = collection.get(ids=ids, where=where, include=include)
        vectors = result.get("embeddings") if embeddings else None
        return {
            chunk_id: (text, meta, None if vectors is None else np.asarray(vectors[i], dtype=np.float32))
            for i, (chunk_id, text, meta) in enumerate(zip(result["ids"], result["documents"], result["metadatas"]))
        }

    def scan(self, collection):
        """Every chunk as (id, text, metadata), a page at a time, for rebuilding the lexical index."""
        offset = 0
        while True:
            page = collection.get(include=["documents", "metadatas"], limit=_PAGE, offset=offset)
            if not page["ids"]:
                return
            yield from zip(page["ids"], page["documents"], page["metadatas"])
            offset += len(page["ids"])
