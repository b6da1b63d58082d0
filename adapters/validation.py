"""Checks an adapter folder must pass before the registry accepts it.

Only JSON and safetensors headers are read: pickle weights are refused by
name and never opened, and no model is loaded.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from adapters.manifest import BaseFingerprint
from bot.errors import InvalidAdapterError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
LAYER_INDEX = re.compile(r"\.\d+\.")


@dataclass(frozen=True)
class AdapterLimits:
    max_rank: int = field(default=256, metadata={"help": "Largest LoRA rank accepted."})
    max_bytes: int = field(default=500_000_000, metadata={"help": "Largest adapter_model.safetensors accepted."})


@dataclass(frozen=True)
class AdapterInfo:
    rank: int
    alpha: float
    target_modules: list[str]
    size_bytes: int
    base_model_name_or_path: str


def generic_module_name(name: str) -> str:
    """``model.layers.3.self_attn.q_proj`` -> ``model.layers.*.self_attn.q_proj``: shapes repeat across layers."""
    return LAYER_INDEX.sub(".*.", f".{name}.").strip(".")


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidAdapterError(f"{path.name}: not readable JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise InvalidAdapterError(f"{path.name}: expected a JSON object")
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise InvalidAdapterError(f"{path.name}: peft_type {config.get('peft_type')!r} is not LORA")
    return config


def _read_shapes(path: Path) -> dict[str, list[int]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            return {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as exc:  # safetensors raises several unrelated types for a damaged file
        raise InvalidAdapterError(f"{path.name}: unreadable safetensors ({exc})") from exc


def _check_targets(config: dict, fingerprint: BaseFingerprint) -> list[str]:
    targets = config.get("target_modules") or []
    module_names = list(fingerprint.modules)
    if isinstance(targets, str):
        if not any(re.fullmatch(targets, name.replace("*", "0")) for name in module_names):
            raise InvalidAdapterError(f"{CONFIG_FILE}: target_modules pattern {targets!r} matches no module of the base")
        return [targets]
    leaves = {name.rsplit(".", 1)[-1] for name in module_names}
    missing = [t for t in targets if t not in leaves and not any(n.endswith(f".{t}") for n in module_names)]
    if missing:
        raise InvalidAdapterError(f"{CONFIG_FILE}: target modules {missing} do not exist in the base model")
    return list(targets)


LORA_MARKERS = (".lora_A.", ".lora_B.", ".lora_embedding_A.", ".lora_embedding_B.")


def _required_size(marker: str, base_shape: list[int]) -> int:
    """The size a LoRA factor's fitting axis must have, given the adapted module's weight shape.

    Linear weights are (out, in): A is (r, in), B is (out, r). Embeddings are
    (num, dim): A is (r, num), B is (dim, r).
    """
    is_a = "_A." in marker
    if "embedding" in marker:
        return base_shape[0] if is_a else base_shape[1]
    return base_shape[1] if is_a else base_shape[0]


def _check_shapes(shapes: dict[str, list[int]], fingerprint: BaseFingerprint) -> None:
    for key, shape in shapes.items():
        marker = next((m for m in LORA_MARKERS if m in key), None)
        if marker is None:
            continue
        module = generic_module_name(key.split(marker)[0].removeprefix("base_model.model."))
        base_shape = fingerprint.modules.get(module)
        if base_shape is None:
            raise InvalidAdapterError(f"{WEIGHTS_FILE}: tensor {key} adapts {module}, which the base model does not have")
        axis = 1 if "_A." in marker else 0
        if len(shape) != 2 or shape[axis] != _required_size(marker, base_shape):
            raise InvalidAdapterError(
                f"{WEIGHTS_FILE}: tensor {key} has shape {shape}, which does not fit {module} {base_shape} "
                "of the base model (an adapter trained for another model?)"
            )


def validate_adapter(folder: Path, fingerprint: BaseFingerprint | None, limits: AdapterLimits) -> AdapterInfo:
    """Raise :class:`InvalidAdapterError` naming the file and the reason, or describe the adapter."""
    if not folder.is_dir():
        raise InvalidAdapterError(f"{folder}: not a folder")
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise InvalidAdapterError(
            f"{pickles[0]}: pickle weights are refused (they can run code when loaded); save the adapter as safetensors"
        )
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / required).is_file():
            raise InvalidAdapterError(f"{required}: missing (a PEFT LoRA folder has {CONFIG_FILE} and {WEIGHTS_FILE})")
    config = _read_config(folder)
    rank = config.get("r")
    if not isinstance(rank, int) or not 1 <= rank <= limits.max_rank:
        raise InvalidAdapterError(f"{CONFIG_FILE}: rank r={rank!r} is outside 1..{limits.max_rank}")
    weights = folder / WEIGHTS_FILE
    size = weights.stat().st_size
    if size > limits.max_bytes:
        raise InvalidAdapterError(f"{WEIGHTS_FILE}: {size} bytes is over the cap of {limits.max_bytes} bytes")
    shapes = _read_shapes(weights)
    if not shapes:
        raise InvalidAdapterError(f"{WEIGHTS_FILE}: holds no tensors")
    targets = list(config.get("target_modules") or [])
    if fingerprint is not None:
        targets = _check_targets(config, fingerprint)
        _check_shapes(shapes, fingerprint)
    return AdapterInfo(
        rank=rank,
        alpha=float(config.get("lora_alpha", rank)),
        target_modules=targets if isinstance(targets, list) else [targets],
        size_bytes=size,
        base_model_name_or_path=str(config.get("base_model_name_or_path") or ""),
    )
