"""The shared encoder's ONNX backend: torch's vectors, exported once, and torch again when the graph is bad."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from core.settings import PACKAGED_EMBEDDING_MODEL
from knowledge.embeddings import SentenceEncoder

TEXTS = [
    "How long is the warranty on a backpack?",
    "背包的保修期是多久？",
    "Can the shop refuse a refund? 可以退款吗",
    "ok",
    "The harbour ferry leaves every twenty minutes from pier 3. " * 80,  # past the 256-token window
]


@pytest.fixture(scope="module")
def torch_encoder() -> SentenceEncoder:
    return SentenceEncoder(PACKAGED_EMBEDDING_MODEL, backend="torch")


def test_the_default_encoder_on_the_cpu_is_onnx_and_gives_torchs_vectors_in_order(encoder, torch_encoder):
    assert encoder.backend == "onnx" and torch_encoder.backend == "torch"
    small_batches = SentenceEncoder(PACKAGED_EMBEDDING_MODEL, batch_size=2, cache_dir=encoder.cache_dir)
    expected = torch_encoder(TEXTS)
    for got in (encoder(TEXTS), small_batches(TEXTS), np.vstack([encoder([t]) for t in TEXTS])):
        assert got.shape == expected.shape == (len(TEXTS), 384) and got.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert np.sum(got * expected, axis=1).min() > 0.9999
    assert encoder([]).shape == (0, 384)


def test_the_export_is_cached_and_reused(encoder):
    graphs = list(encoder.cache_dir.glob("encoders/*/model.onnx"))
    assert len(graphs) == 1 and not list(encoder.cache_dir.glob("encoders/*/*.partial"))
    written = graphs[0].stat().st_mtime_ns
    again = SentenceEncoder(PACKAGED_EMBEDDING_MODEL, cache_dir=encoder.cache_dir)
    assert again.backend == "onnx" and graphs[0].stat().st_mtime_ns == written


def test_a_broken_cached_graph_leaves_the_encoder_on_torch_with_a_warning(encoder, torch_encoder, tmp_path, caplog):
    good = next(encoder.cache_dir.glob("encoders/*"))
    broken = tmp_path / "encoders" / good.name
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    fallback = SentenceEncoder(PACKAGED_EMBEDDING_MODEL, cache_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="knowledge.embeddings"):
        assert fallback.backend == "torch"
    assert "stays on torch" in caplog.text and "onnxruntime cannot load" in caplog.text
    np.testing.assert_allclose(fallback(TEXTS[:2]), torch_encoder(TEXTS[:2]), atol=1e-6)


def test_an_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown embedding backend"):
        SentenceEncoder(PACKAGED_EMBEDDING_MODEL, backend="tensorrt")
