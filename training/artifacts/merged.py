"""The adapter merged into its base: one plain transformers checkpoint.

The base is loaded in full precision, never the 4-bit serving copy: folding
a LoRA update into NF4 weights rounds most of it away.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from adapters.manifest import Manifest
from core.settings import Settings

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_full_base(settings: Settings):
    """The base model in float32 on the CPU, with its tokenizer as shipped (chat template included)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.base_model import resolve_base_model

    source = resolve_base_model(settings)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, device_map={"": "cpu"})
    model.eval()
    return model, AutoTokenizer.from_pretrained(source)


def merge_adapter(settings: Settings, adapter_dir: Path):
    """The full-precision base with the LoRA folded into its weights (PEFT's merge_and_unload)."""
    from peft import PeftModel

    base, tokenizer = load_full_base(settings)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.eval()
    return merged, tokenizer


def write_merged(model, tokenizer, folder: Path, dtype: str) -> None:
    """safetensors weights, config, generation config and the tokenizer with its chat template."""
    model.to(TORCH_DTYPES[dtype]).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def _figure(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def model_card(
    manifest: Manifest, settings: Settings, artefact: str, usage: list[str], run_report: dict[str, Any] | None = None
) -> str:
    """README.md naming the base, the adapter version, its training data, its evaluation figures and how to run it."""
    base = settings.base_model
    lines = [
        "---",
        f"base_model: {json.dumps(base)}",
        "library_name: transformers",
        f"tags: [switchboard, lora, {artefact.split(',')[0]}]",
        "---",
        "",
        f"# {manifest.name} v{manifest.version} ({artefact})",
        "",
        manifest.description or "A Switchboard LoRA adapter.",
        "",
        "## Base and adapter",
        "",
        f"- Base model: `{base}` ({manifest.fingerprint.get('architecture', 'unknown architecture')}, "
        f"{manifest.fingerprint.get('num_layers', '?')} layers, hidden size {manifest.fingerprint.get('hidden_size', '?')})",
        f"- Adapter: `{manifest.name}` version {manifest.version}, installed {manifest.created_at}",
        f"- LoRA: rank {manifest.rank}, alpha {_figure(manifest.alpha)}, on {', '.join(manifest.target_modules) or 'unknown modules'}",
        f"- Source: {manifest.provenance.get('source', 'unknown')}"
        + (f", training run `{manifest.provenance['run_id']}`" if manifest.provenance.get("run_id") else ""),
        "",
        "## Training data",
        "",
        *_data_lines(manifest, run_report),
        "",
        "## Evaluation",
        "",
        *_metric_lines(manifest),
        "",
        "## Run it",
        "",
        "```",
        *usage,
        "```",
        "",
    ]
    if manifest.system_prompt:
        lines += ["## System prompt it was trained and served with", "", "```", manifest.system_prompt, "```", ""]
    return "\n".join(lines)


def _value(value: Any) -> str:
    """A figure, or a small table of them on one line (``train 20, held out 4``)."""
    if isinstance(value, dict):
        return ", ".join(f"{k.replace('_', ' ')} {_figure(v)}" for k, v in value.items()) or "none"
    return _figure(value)


def _data_lines(manifest: Manifest, run_report: dict[str, Any] | None) -> list[str]:
    card = (run_report or {}).get("dataset") or {}
    lines = [f"- {key.replace('_', ' ')}: {_value(value)}" for key, value in card.items() if not isinstance(value, list)]
    if manifest.provenance.get("dataset_hash"):
        lines.append(f"- dataset hash: `{manifest.provenance['dataset_hash']}`")
    return lines or ["No training data was recorded (the adapter was uploaded, not trained here)."]


def _metric_lines(manifest: Manifest) -> list[str]:
    rows = [f"| {key.replace('_', ' ')} | {_figure(value)} |" for key, value in manifest.metrics.items()]
    if not rows:
        return ["No evaluation figures were recorded at install."]
    return ["| measure | value |", "| --- | --- |", *rows]
