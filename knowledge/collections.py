"""The knowledge collections in Chroma, by name, each checked against the model that embedded it.

A collection records the embedding model it was written with, and a query
embedded by another model would compare vectors of two different spaces, so
every use checks the model first. Only the writer lock holder knows nobody
else creates or drops collections, so only it keeps them in memory for good;
others (replicas sharing a Chroma server) keep each for ``refresh_s`` seconds,
and see another's change within that time.
"""

from __future__ import annotations

import time
import uuid

from core.errors import ConfigError, NotFoundError
from knowledge.store import MODEL_KEY, ChromaStore


class Collections:
    """Chroma collections by name for one knowledge base, embedded with ``model_name``."""

    def __init__(self, store: ChromaStore, model_name: str, *, trusted: bool, refresh_s: float = 0.0) -> None:
        self.store = store
        self.model_name = model_name
        self.trusted = trusted
        self.refresh_s = refresh_s
        self._known: dict[str, tuple[object, float]] = {}  # name -> (collection, when it was read)

    def names(self) -> list[str]:
        return self.store.names()

    def get(self, name: str, fresh: bool = False):
        """The Chroma collection of ``name``, or None when there is none (yet). ``fresh`` asks the store
        whatever is in memory (a writer about to change it)."""
        known = self._known.get(name)
        if known is not None and not fresh and (self.trusted or time.monotonic() - known[1] < self.refresh_s):
            return known[0]
        chroma = self.store.collection(name)
        self._remember(name, chroma)
        return chroma

    def create(self, name: str):
        chroma = self.store.collection(name, create=True)
        self._remember(name, chroma)
        return chroma

    def _remember(self, name: str, chroma) -> None:
        if chroma is None:
            self._known.pop(name, None)
        elif self.trusted or self.refresh_s > 0:
            self._known[name] = (chroma, time.monotonic())

    def require(self, name: str, fresh: bool = False):
        """The Chroma collection of ``name``; a person asked for it, so its absence is an error."""
        chroma = self.get(name, fresh)
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
