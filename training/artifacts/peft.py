"""The adapter as it is, for a multi-LoRA server such as vLLM."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from adapters.manifest import MANIFEST_FILE
from adapters.validation import CONFIG_FILE, WEIGHTS_FILE
from core.errors import InvalidRequestError

# vLLM sizes its LoRA kernels for these ranks only; --max-lora-rank must be one of them.
VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def vllm_rank(rank: int) -> int:
    fit = next((r for r in VLLM_RANKS if r >= rank), None)
    if fit is None:
        raise InvalidRequestError(f"rank {rank} is above vLLM's largest --max-lora-rank ({VLLM_RANKS[-1]})")
    return fit


def vllm_command(base_model: str, name: str, path: Path, rank: int) -> str:
    """The exact line that serves the base with this adapter under ``name``."""
    return shlex.join(
        ["vllm", "serve", base_model, "--enable-lora", "--lora-modules", f"{name}={path}", "--max-lora-rank", str(vllm_rank(rank))]
    )


def copy_adapter(adapter_dir: Path, folder: Path) -> None:
    """The PEFT files and the manifest that describes them."""
    for file_name in (CONFIG_FILE, WEIGHTS_FILE, MANIFEST_FILE):
        shutil.copyfile(adapter_dir / file_name, folder / file_name)
