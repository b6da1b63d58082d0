"""One entry point for every export: checks, a size estimate, a staged folder, then the format's writer.

The CLI, the admin API and the UI all call :func:`export_adapter`; the checks
run before anything is written, and the artefact appears under its final name
only once it is complete (see :mod:`training.artifacts.staging`).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adapters.manifest import Manifest
from adapters.registry import Registry
from adapters.validation import WEIGHTS_FILE, validate_adapter
from core.errors import InvalidAdapterError
from core.settings import Settings
from training.artifacts.config import ExportConfig
from training.artifacts.merged import model_card
from training.artifacts.staging import check_space, check_target, describe_files, staged_folder

Progress = Callable[[float, str], None]
FINGERPRINT_KEYS = ("architecture", "hidden_size", "num_layers", "vocab_size")
MERGED_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
SLACK = 1.05  # config, tokenizer and file headers on top of the weights


def _quiet(fraction: float, message: str) -> None:
    """No progress reporting."""


def checked_manifest(registry: Registry, name: str, version: int | None) -> Manifest:
    """The adapter version, re-validated against the configured base (shapes and recorded fingerprint)."""
    manifest = registry.get(name, version)
    validate_adapter(Path(manifest.path), registry.fingerprint, registry.limits)
    if registry.fingerprint is not None and manifest.fingerprint:
        current = registry.fingerprint.summary()
        differs = [k for k in FINGERPRINT_KEYS if k in manifest.fingerprint and manifest.fingerprint[k] != current[k]]
        if differs:
            key = differs[0]
            raise InvalidAdapterError(
                f"{name} v{manifest.version} was installed for a base with {key}={manifest.fingerprint[key]}, "
                f"but the configured base has {key}={current[key]}; configure its base to export it"
            )
    return manifest


def base_parameters(settings: Settings) -> int:
    """Parameters of the base (a tied head counted once), from its config alone."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.base_model import resolve_base_model

    config = AutoConfig.from_pretrained(resolve_base_model(settings))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def estimate_bytes(settings: Settings, manifest: Manifest, config: ExportConfig) -> int:
    """What the export will write, to check free space before writing any of it."""
    adapter = Path(manifest.path, WEIGHTS_FILE).stat().st_size
    if config.format == "peft":
        return adapter
    parameters = base_parameters(settings)
    if config.format == "merged":
        return int(parameters * MERGED_BYTES[config.precision] * SLACK)
    from training.artifacts.gguf import estimate_bytes as gguf_bytes

    return int((gguf_bytes(parameters, config.precision) + 2 * adapter) * SLACK)


def _existing_parent(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _run_report(settings: Settings, manifest: Manifest) -> dict[str, Any] | None:
    run_id = manifest.provenance.get("run_id")
    path = settings.runs_dir / str(run_id) / "report.json" if run_id else None
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def export_adapter(
    settings: Settings,
    registry: Registry,
    name: str,
    config: ExportConfig,
    version: int | None = None,
    progress: Progress = _quiet,
) -> dict[str, Any]:
    """Build one artefact of an installed adapter and describe what was written (sizes, sha256)."""
    started = time.perf_counter()
    manifest = checked_manifest(registry, name, version)
    target = config.out.absolute()
    check_target(target, config.force)
    check_space(_existing_parent(target), estimate_bytes(settings, manifest, config), config.keep_free_bytes)
    with staged_folder(target, config.force) as stage:
        usage = WRITERS[config.format](settings, manifest, config, stage, target, progress)
        artefact = f"{config.format}, {config.precision}" if config.precision else config.format
        card = model_card(manifest, settings, artefact, usage, _run_report(settings, manifest))
        (stage / "README.md").write_text(card, encoding="utf-8")
        progress(0.98, "checking what was written")
    files = describe_files(target)
    progress(1.0, "done")
    return {
        "adapter": manifest.name,
        "version": manifest.version,
        "format": config.format,
        "dtype": config.precision,
        "out": str(target),
        "files": files,
        "bytes": sum(f["bytes"] for f in files),
        "usage": usage,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _merge(settings: Settings, manifest: Manifest, progress: Progress):
    from training.artifacts.merged import merge_adapter

    progress(0.05, "loading the base in full precision and merging the adapter")
    return merge_adapter(settings, Path(manifest.path))


def _write_merged(settings, manifest, config, stage: Path, target: Path, progress: Progress) -> list[str]:
    from training.artifacts.merged import write_merged

    model, tokenizer = _merge(settings, manifest, progress)
    progress(0.5, f"writing safetensors ({config.precision})")
    write_merged(model, tokenizer, stage, config.precision)
    return [
        f"python -c \"from transformers import pipeline; print(pipeline('text-generation', '{target}')"
        "([{'role': 'user', 'content': 'Hello'}]))\"",
        f"vllm serve {target}",
    ]


def _merged_gguf(settings, manifest, config, stage: Path, progress: Progress):
    """The merged model as ``NAME-vN-PRECISION.gguf`` in ``stage``; returns its file name and the tokenizer."""
    from training.artifacts.gguf import gguf_arch, write_model_gguf

    model, tokenizer = _merge(settings, manifest, progress)
    gguf_arch(model.config)  # an unsupported base fails before anything is written
    file_name = f"{manifest.name}-v{manifest.version}-{config.precision}.gguf"
    scratch = stage / ".tokenizer"
    tokenizer.save_pretrained(scratch)
    progress(0.4, f"writing {file_name}")
    title = f"{manifest.name} v{manifest.version}"
    write_model_gguf(model, tokenizer, scratch, stage / file_name, config.precision, title,
                     progress=lambda f: progress(0.4 + 0.5 * f, f"writing {file_name}"))
    shutil.rmtree(scratch)
    return file_name, model.config, tokenizer


def _write_gguf(settings, manifest, config, stage: Path, target: Path, progress: Progress) -> list[str]:
    from training.artifacts.gguf import write_lora_gguf

    file_name, model_config, _ = _merged_gguf(settings, manifest, config, stage, progress)
    lora_name = f"{manifest.name}-v{manifest.version}-lora.gguf"
    progress(0.92, f"writing {lora_name}")
    write_lora_gguf(Path(manifest.path), model_config, stage / lora_name, f"{manifest.name} v{manifest.version} LoRA")
    return [
        f"llama-cli -m {target / file_name} -cnv",
        f"llama-cli -m BASE.gguf --lora {target / lora_name} -cnv   # BASE.gguf: the same base, e.g. {settings.base_model}",
    ]


def _write_ollama(settings, manifest, config, stage: Path, target: Path, progress: Progress) -> list[str]:
    from training.artifacts.ollama import is_chatml, modelfile

    file_name, _, tokenizer = _merged_gguf(settings, manifest, config, stage, progress)
    generation = {**settings.generation.model_dump(), **manifest.generation}
    stop = [tokenizer.eos_token, *(["<|im_start|>"] if is_chatml(tokenizer.chat_template) else [])]
    stop += [s for s in generation.get("stop") or [] if s not in stop]
    text = modelfile(file_name, tokenizer, manifest.system_prompt, generation, stop)
    (stage / "Modelfile").write_text(text, encoding="utf-8")
    return [f"cd {target} && ollama create {manifest.name} -f Modelfile && ollama run {manifest.name}"]


def _write_peft(settings, manifest, config, stage: Path, target: Path, progress: Progress) -> list[str]:
    from training.artifacts.peft import copy_adapter, vllm_command

    progress(0.1, "copying the adapter")
    copy_adapter(Path(manifest.path), stage)
    return [vllm_command(settings.base_model, manifest.name, target, manifest.rank)]


WRITERS = {"merged": _write_merged, "gguf": _write_gguf, "ollama": _write_ollama, "peft": _write_peft}
