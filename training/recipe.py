"""The recipe of one fine-tuning run: every knob ``training.finetune`` reads, in one place.

A recipe is data, not code: it is written into the run folder next to the
adapter it produced, so a run can be repeated and compared with another.
Defaults come from the ``[training]`` settings section
(:class:`core.sections.TrainingDefaults`); a run overrides single fields.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.sections import TrainingDefaults

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # The adapter.
    rank: int = Field(
        4,
        ge=1,
        le=1024,
        description="LoRA rank r: the width of the low-rank update. 4 on every projection teaches a style or format "
        "(QLoRA found rank matters little once every layer is adapted) and keeps a resident adapter under 2% of the "
        "4-bit base, so many stay loaded.",
    )
    alpha: int = Field(
        16,
        ge=1,
        description="LoRA alpha; the update is scaled by alpha / rank. 4x the rank: at rank 4, alpha 8 lost one of "
        "the 12 golden format checks of the demo support adapter that alpha 16 keeps.",
    )
    dropout: float = Field(
        0.05,
        ge=0.0,
        lt=1.0,
        description="Dropout on the LoRA input during training; 0 saves a fifth of each step on a CPU, at some cost "
        "in forgetting (a style adapter's general perplexity rose 27% over the base without it, fell 11% with it).",
    )
    target_modules: list[str] = Field(
        default_factory=lambda: list(ALL_PROJECTIONS),
        min_length=1,
        description="Linear layers that get a LoRA update; the default is every attention and MLP projection.",
    )
    # The base it is trained on.
    quantized: bool = Field(True, description="QLoRA on the 4-bit base; off trains LoRA on the full-precision base.")
    gradient_checkpointing: bool = Field(True, description="Recompute activations in the backward pass to save memory.")
    # The optimisation.
    max_steps: int = Field(
        60, ge=1, description="Optimizer steps; small data sets are seen several times, early stopping ends a run sooner."
    )
    batch_size: int = Field(4, ge=1, description="Examples per device step.")
    gradient_accumulation: int = Field(1, ge=1, description="Device steps per optimizer step.")
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate after warm-up.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Fraction of the steps spent warming the learning rate up.")
    scheduler: Literal["cosine", "linear", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule after warm-up."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    optimizer: Literal["auto", "paged_adamw_8bit", "adamw_torch"] = Field(
        "auto", description="auto: paged 8-bit AdamW on CUDA, plain AdamW on the CPU (bitsandbytes' paged optimizers need CUDA)."
    )
    max_length: int = Field(512, ge=16, description="Tokens per example at most; longer examples are cut at the end.")
    early_stopping_patience: int = Field(
        2, ge=0, description="Epochs without a better held-out loss before stopping; 0 never stops early."
    )
    seed: int = Field(42, description="Seed for LoRA initialisation, shuffling and dropout.")

    @model_validator(mode="after")
    def _check(self) -> "Recipe":
        if len(set(self.target_modules)) != len(self.target_modules):
            raise ValueError("target_modules lists a module twice")
        return self

    @classmethod
    def from_defaults(cls, defaults: TrainingDefaults, **overrides) -> "Recipe":
        """The recipe the settings describe, with single fields overridden by one run (None keeps the default)."""
        values = {name: getattr(defaults, name) for name in cls.model_fields if name in type(defaults).model_fields}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def resolved_optimizer(self, device_type: str) -> str:
        if self.optimizer != "auto":
            return self.optimizer
        return "paged_adamw_8bit" if device_type == "cuda" else "adamw_torch"
