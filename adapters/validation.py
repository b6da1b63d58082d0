"""Checks an adapter folder must pass before the registry accepts it, and again at every start.

What is checked is what serving will do with the adapter (:mod:`engine.lora`): a
plain LoRA on linear layers of the base, every factor pair of the rank its
config names, every value finite, ``r`` and ``lora_alpha`` numbers it can
divide by. An adapter that passes cannot fail when a request first loads it.

Pickle weights are refused by name and never opened, and no model is loaded.
The factors themselves are read once (with ``safetensors``, as tensors) only
to prove them finite: one NaN would not stay in its own rows, since the slot
mask multiplies every resident adapter's factors by 0 and 0 x NaN is NaN.
That is the one check a header cannot answer, and it belongs here, before an
install or a start serves the adapter, rather than on the decoding thread.

Messages name the file and the tensor, never a server path: they reach HTTP
clients as they are.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.manifest import BaseFingerprint
from core.errors import InvalidAdapterError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
LAYER_INDEX = re.compile(r"\.\d+\.")
PEFT_PREFIX = "base_model.model."
FACTOR = re.compile(r"^(?P<module>.+)\.lora_(?P<factor>[AB])\.weight$")
UNSUPPORTED = (
    ("DoRA", lambda c: c.get("use_dora")),
    ("trained biases", lambda c: c.get("bias", "none") != "none"),
    ("modules_to_save", lambda c: c.get("modules_to_save")),
    ("fan_in_fan_out layers", lambda c: c.get("fan_in_fan_out")),
)


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


def pattern_value(patterns: Mapping[str, Any] | None, module: str, default: Any) -> Any:
    """PEFT's ``rank_pattern`` / ``alpha_pattern`` lookup: the first pattern the module name ends with."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_pattern(pattern: str, what: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise InvalidAdapterError(f"{CONFIG_FILE}: {what} {pattern!r} is not a valid regular expression ({exc})") from None


def check_config(config: Any, limits: AdapterLimits | None = None) -> dict:
    """Refuse a config serving could not apply: wrong types, ranks and scalings it cannot divide by, features it lacks."""
    limits = limits or AdapterLimits()
    if not isinstance(config, dict):
        raise InvalidAdapterError(f"{CONFIG_FILE}: expected a JSON object")
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise InvalidAdapterError(f"{CONFIG_FILE}: peft_type {config.get('peft_type')!r} is not LORA")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= limits.max_rank:
        raise InvalidAdapterError(f"{CONFIG_FILE}: rank r={rank!r} is outside 1..{limits.max_rank}")
    alpha = config.get("lora_alpha", rank)
    if not _is_number(alpha) or alpha <= 0:
        raise InvalidAdapterError(f"{CONFIG_FILE}: lora_alpha={alpha!r} is not a positive number")
    for key, valid, what in (
        ("rank_pattern", lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= limits.max_rank,
         f"a rank in 1..{limits.max_rank}"),
        ("alpha_pattern", lambda v: _is_number(v) and v > 0, "a positive number"),
    ):
        patterns = config.get(key) or {}
        if not isinstance(patterns, dict):
            raise InvalidAdapterError(f"{CONFIG_FILE}: {key} must map module patterns to values")
        for pattern, value in patterns.items():
            _check_pattern(pattern, f"{key} key")
            if not valid(value):
                raise InvalidAdapterError(f"{CONFIG_FILE}: {key}[{pattern!r}]={value!r} is not {what}")
    targets = config.get("target_modules")
    if isinstance(targets, str):
        _check_pattern(targets, "target_modules pattern")
    elif targets is not None and not (isinstance(targets, list) and all(isinstance(t, str) and t for t in targets)):
        raise InvalidAdapterError(f"{CONFIG_FILE}: target_modules={targets!r} is not a module name, a list of names or a regex")
    unsupported = next((name for name, present in UNSUPPORTED if present(config)), None)
    if unsupported:
        raise InvalidAdapterError(f"{CONFIG_FILE}: serving applies plain LoRA on linear layers; {unsupported} is not supported")
    return config


def lora_pairs(names: list[str]) -> dict[str, tuple[str, str]]:
    """The tensor names of each module's (A, B) factors; refuses any other tensor and a factor without its pair."""
    factors: dict[tuple[str, str], str] = {}
    for name in names:
        match = FACTOR.match(name.removeprefix(PEFT_PREFIX))
        if match is None:
            raise InvalidAdapterError(f"{WEIGHTS_FILE}: tensor {name} is not a LoRA factor of a linear layer (not supported)")
        factors[(match["module"], match["factor"])] = name
    unpaired = sorted(factors[key] for key in factors if (key[0], "B" if key[1] == "A" else "A") not in factors)
    if unpaired:
        raise InvalidAdapterError(f"{WEIGHTS_FILE}: tensor {unpaired[0]} lacks its LoRA pair (factors come as A and B)")
    if not factors:
        raise InvalidAdapterError(f"{WEIGHTS_FILE}: holds no LoRA factors")
    return {module: (factors[(module, "A")], factors[(module, "B")]) for module, kind in factors if kind == "A"}


def first_non_finite(tensors: Mapping[str, Any]) -> str | None:
    """The name of the first tensor holding a NaN or an infinity, or None (one pass over all of them)."""
    import torch

    if not tensors or bool(torch.isfinite(torch.cat([t.reshape(-1).float() for t in tensors.values()])).all()):
        return None
    return next(name for name, t in tensors.items() if not bool(torch.isfinite(t).all()))


def _read_config(folder: Path, limits: AdapterLimits) -> dict:
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidAdapterError(f"{CONFIG_FILE}: not readable JSON ({type(exc).__name__})") from None
    return check_config(config, limits)


def _read_weights(path: Path) -> dict[str, Any]:
    """Every tensor of the weights file (torch, so bfloat16 reads too)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # safetensors raises several unrelated types for a damaged file
        raise InvalidAdapterError(f"{WEIGHTS_FILE}: unreadable safetensors ({_without_paths(str(exc), path)})") from None


def _without_paths(message: str, path: Path) -> str:
    return message.replace(str(path.parent), "").replace(str(path), path.name)


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


def check_factors(tensors: Mapping[str, Any], config: dict, fingerprint: BaseFingerprint | None = None) -> None:
    """Each pair fits its module of the base (A is (r, in), B is (out, r)) with the rank the config gives it."""
    for module, (name_a, name_b) in lora_pairs(list(tensors)).items():
        rank = pattern_value(config.get("rank_pattern"), module, config["r"])
        shape_a, shape_b = list(tensors[name_a].shape), list(tensors[name_b].shape)
        for name, shape, axis in ((name_a, shape_a, 0), (name_b, shape_b, 1)):
            if len(shape) != 2 or shape[axis] != rank:
                raise InvalidAdapterError(
                    f"{WEIGHTS_FILE}: tensor {name} has shape {shape}; its rank axis must be r={rank} "
                    f"as {CONFIG_FILE} says"
                )
        if fingerprint is None:
            continue
        generic = generic_module_name(module)
        base_shape = fingerprint.modules.get(generic)
        if base_shape is None:
            raise InvalidAdapterError(f"{WEIGHTS_FILE}: tensor {name_a} adapts {generic}, which the base model does not have")
        for name, shape, expected in ((name_a, shape_a, [rank, base_shape[1]]), (name_b, shape_b, [base_shape[0], rank])):
            if shape != expected:
                raise InvalidAdapterError(
                    f"{WEIGHTS_FILE}: tensor {name} has shape {shape}, which does not fit {generic} {base_shape} "
                    "of the base model (an adapter trained for another model?)"
                )


def validate_adapter(folder: Path, fingerprint: BaseFingerprint | None, limits: AdapterLimits) -> AdapterInfo:
    """Raise :class:`InvalidAdapterError` naming the file, the tensor and the reason, or describe the adapter."""
    if not folder.is_dir():
        raise InvalidAdapterError(f"{folder.name}: not a folder")
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise InvalidAdapterError(
            f"{pickles[0]}: pickle weights are refused (they can run code when loaded); save the adapter as safetensors"
        )
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / required).is_file():
            raise InvalidAdapterError(f"{required}: missing (a PEFT LoRA folder has {CONFIG_FILE} and {WEIGHTS_FILE})")
    config = _read_config(folder, limits)
    weights = folder / WEIGHTS_FILE
    size = weights.stat().st_size
    if size > limits.max_bytes:
        raise InvalidAdapterError(f"{WEIGHTS_FILE}: {size} bytes is over the cap of {limits.max_bytes} bytes")
    targets = config.get("target_modules") or []
    if fingerprint is not None:
        targets = _check_targets(config, fingerprint)
    tensors = _read_weights(weights)
    check_factors(tensors, config, fingerprint)
    bad = first_non_finite(tensors)
    if bad is not None:
        raise InvalidAdapterError(f"{WEIGHTS_FILE}: tensor {bad} holds NaN or infinite values")
    return AdapterInfo(
        rank=config["r"],
        alpha=float(config.get("lora_alpha", config["r"])),
        target_modules=[targets] if isinstance(targets, str) else list(targets),
        size_bytes=size,
        base_model_name_or_path=str(config.get("base_model_name_or_path") or ""),
    )
