"""The ONNX Parts backend of :class:`knowledge.embeddings.SentenceEncoder`.

One short query through sentence-transformers on torch costs 9-14 ms on two
CPU cores, most of it per-operator overhead of eager PyTorch on tiny
matrices; the same graph in onnxruntime takes about 3 ms and gives the same
vectors (cosine 1.0 to seven decimals). Routing and retrieval embed one query
per chat turn, so that is the floor under both.

sentence-transformers' own ``backend="onnx"`` needs optimum-onnx, which pins
transformers < 4.58; so the whole sentence-transformers pipeline (transformer,
pooling, any dense layer) is exported here with ``torch.onnx`` once, cached
beside the converted base model, and run by onnxruntime (already installed
with chromadb). An export that fails, or whose vectors differ from torch's,
is reported and the encoder stays on torch: nothing is served from a graph
that was not checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from core.files import atomic_path

# Mixed scripts and lengths: the check must see padding, [UNK] and more than one batch row.
PROBE = ["How long is the warranty on a backpack?", "退货运费怎么算？", "ok"]
MIN_PROBE_COSINE = 0.9999


class OnnxExportError(RuntimeError):
    """The model could not be exported, or its exported graph does not reproduce torch's vectors."""


def cache_folder(cache_dir: Path, model_name: str, model_path: str) -> Path:
    """Where the export of one model lives; a new model file (an upgrade) gets a new folder."""
    stamps = []
    folder = Path(model_path)
    if folder.is_dir():
        for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
            stat = weights.stat()
            stamps.append(f"{weights.name}:{stat.st_size}:{int(stat.st_mtime)}")
    digest = hashlib.sha256(json.dumps([model_path, stamps]).encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "--", model_name).strip("-.") or "encoder"
    return cache_dir / "encoders" / f"{safe}-{digest}"


class OnnxSentenceEncoder:
    """A sentence-transformers model's full forward pass in onnxruntime; tokenization stays in Python."""

    def __init__(self, model, graph: Path) -> None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise OnnxExportError("onnxruntime is not installed (pip install onnxruntime)") from exc
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initialisers are noise to a user
        # Idle pool threads spin by default; in a server the decoding thread wants those cores between queries.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's errors derive from Exception alone
            raise OnnxExportError(f"onnxruntime cannot load {graph}: {exc}") from exc
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._model = model
        self._prompt = model.prompts.get(model.default_prompt_name) if model.default_prompt_name else None

    def __call__(self, texts: list[str]) -> np.ndarray:
        features = self._model.preprocess(texts, prompt=self._prompt)
        feeds = {name: features[name].numpy().astype(np.int64) for name in self._inputs}
        (vectors,) = self._session.run(None, feeds)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)  # unit rows, as the torch path gives


def export(model, folder: Path) -> Path:
    """``folder/model.onnx`` for ``model`` (a SentenceTransformer), written once; later calls reuse it.

    The file is written under a temporary name and renamed, so an interrupted
    export never leaves a graph that loads but is cut short.
    """
    graph = folder / "model.onnx"
    if graph.is_file():
        return graph
    features = model.preprocess(PROBE)
    names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in features]
    folder.mkdir(parents=True, exist_ok=True)
    axes = {name: {0: "batch", 1: "tokens"} for name in names}
    try:
        with atomic_path(graph, suffix=".partial") as partial, torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python branches the probe already fixes
            torch.onnx.export(  # dynamo=False: the TorchScript exporter needs onnx alone, not onnxscript
                _Forward(model, names).eval(),
                tuple(features[name] for name in names),
                str(partial),
                input_names=names,
                output_names=["sentence_embedding"],
                dynamic_axes={**axes, "sentence_embedding": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
            os.chmod(partial, 0o644)
    except Exception as exc:  # torch.onnx raises many types; each means "this model does not export"
        raise OnnxExportError(f"could not export {type(model).__name__} to ONNX: {exc}") from exc
    return graph


def load(model, folder: Path, torch_vectors: np.ndarray) -> OnnxSentenceEncoder:
    """The exported ``model`` in onnxruntime, checked against ``torch_vectors``, torch's vectors of :data:`PROBE`."""
    encoder = OnnxSentenceEncoder(model, export(model, folder))
    try:
        vectors = encoder(PROBE)
    except Exception as exc:  # onnxruntime's errors derive from Exception alone
        raise OnnxExportError(f"onnxruntime cannot run the exported graph: {exc}") from exc
    cosine = np.sum(vectors * torch_vectors, axis=1)  # both unit rows
    if vectors.shape != torch_vectors.shape or float(cosine.min()) < MIN_PROBE_COSINE:
        raise OnnxExportError(f"the ONNX graph's vectors differ from torch's (cosine {float(cosine.min()):.5f})")
    return encoder


class _Forward(torch.nn.Module):
    """Positional tensors in, the pipeline's sentence embedding out: the signature torch.onnx traces."""

    def __init__(self, model, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(dict(zip(self.names, tensors)))["sentence_embedding"]
