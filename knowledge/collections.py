"""The knowledge collections in Chroma, by name, each checked against the model that embedded it.

A collection records the embedding model it was written with, and a query
embedded by another model would compare vectors of two different spaces, so
every use checks the model first. Only the writer lock holder knows nobody
else creates or drops collections, so only it keeps them in memory.
"""

from __future__ import annotations

import uuid

from core.errors import ConfigError, NotFoundError
from knowledge.store import MODEL_KEY, ChromaStore


class Collections:
    """Chroma collections by name for one knowledge base, embedded with ``model_name``."""

    def __init__(self, store: ChromaStore, model_name: str, *, trusted: bool) -> None:
        self.store = store
        self.model_name = model_name
        self.trusted = trusted
        self._known: dict[str, object] = {}

    def names(self) -> list[str]:
        return self.store.names()

    def get(self, name: str):
        """The Chroma collection of ``name``, or None when there is none (yet)."""
        if self.trusted and name in self._known:
            return self._known[name]
        chroma = self.store.collection(name)
        if chroma is not None and self.trusted:
            self._known[name] = chroma
        return chroma

    def create(self, name: str):
        chroma = self.store.collection(name, create=True)
        if self.trusted:
            self._known[name] = chroma
        return chroma

    def require(self, name: str):
        """The Chroma collection of ``name``; a person asked for it, so its absence is an error."""
        chroma = self.get(name)
        if chroma is None:
            known = ", ".join(self.names()) or "none yet"
            raise NotFoundError(f"no knowledge collection '{name}' (collections: {known})")
        return chroma

    def check_model(self, name: str, chroma) -> None:
        model = (chroma.metadata or {}).get(MODEL_KEY)
        if model and model != self.model_name:
            raise ConfigError(
                f"collection '{name}' was embedded with '{model}', not '{self.model_name}'; "
                "set embedding_model back or re-ingest it"
            )

    def new_state(self, chroma) -> str:
        """Record a fresh state token before changing a collection, so every lexical index saved before is stale."""
        state = uuid.uuid4().hex
        self.store.set_state(chroma, state, self.model_name)
        return state
