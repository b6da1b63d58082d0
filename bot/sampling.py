"""Per-request generation options and the token choice of one decoding step.

Each row of a batch carries its own options (temperature, top-p, repetition
penalty, seed), so requests for different users can share a forward pass.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from bot.settings import GenerationDefaults


class GenerationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(256, ge=1, le=8192, description="Tokens generated at most.")
    temperature: float = Field(0.0, ge=0.0, le=5.0, description="0 decodes greedily.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus mass when sampling.")
    repetition_penalty: float = Field(1.0, ge=1.0, le=3.0, description="CTRL-style penalty on seen tokens.")
    stop: list[str] = Field(default_factory=list, description="Generation ends before the first of these strings.")
    seed: int | None = Field(None, description="Makes sampling repeatable.")
    ignore_eos: bool = Field(False, description="Keep generating past end-of-turn (benchmarks need equal lengths).")

    @classmethod
    def from_defaults(cls, defaults: GenerationDefaults, **overrides) -> GenerationOptions:
        values = defaults.model_dump()
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)


class RowSampler:
    """Chooses the next token of one row; holds the row's random generator."""

    def __init__(self, options: GenerationOptions, device: torch.device) -> None:
        self.options = options
        self.generator: torch.Generator | None = None
        if options.temperature > 0:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(options.seed if options.seed is not None else torch.seed())

    def __call__(self, logits: torch.Tensor, seen: torch.Tensor) -> int:
        """``logits`` is this row's (vocab,) scores; ``seen`` the ids of its prompt and output so far."""
        logits = logits.float()
        penalty = self.options.repetition_penalty
        if penalty != 1.0 and seen.numel():
            scores = logits.gather(0, seen)
            logits = logits.scatter(0, seen, torch.where(scores < 0, scores * penalty, scores / penalty))
        if self.generator is None:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / self.options.temperature, dim=-1)
        if self.options.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < self.options.top_p
            sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
            choice = torch.multinomial(sorted_probs, 1, generator=self.generator)
            return int(order[choice])
        return int(torch.multinomial(probs, 1, generator=self.generator))
