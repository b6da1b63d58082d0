"""Real PEFT LoRA folders with random weights, for tests and benchmarks.

``init_lora_weights=False`` makes both LoRA factors non-zero, so the adapter
changes the model's output without any training: the serving path (loading,
mixed batches, eviction) is exercised exactly as with a trained adapter.
"""

from __future__ import annotations

from pathlib import Path

import torch


def make_random_adapter(
    base_config,
    folder: Path,
    seed: int = 0,
    rank: int = 8,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
) -> Path:
    """Write a LoRA for a model of ``base_config`` (a transformers config) into ``folder``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(base_config)
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets), init_lora_weights=False)
    peft_model = get_peft_model(model, lora).to_empty(device="cpu")  # only the LoRA factors get values
    generator = torch.Generator().manual_seed(seed)
    for name, param in peft_model.named_parameters():
        if "lora_" in name:
            param.data.normal_(std=0.05, generator=generator)
    peft_model.save_pretrained(folder)
    return folder
