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

    def __call__(self, logits: torch.Tensor, generated: torch.Tensor) -> int:
        """``logits`` is this row's (vocab,) scores; ``generated`` the ids of its answer so far."""
        logits = penalize_repeats(logits.float(), generated, self.options.repetition_penalty)
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


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty on the ``seen`` ids, along the last axis.

    Callers pass the tokens the answer has produced so far, not the prompt: the
    penalty is there to stop a small model repeating itself, and applied to the
    prompt it would push the answer away from quoting its sources, from the
    format its system prompt names, and from the end-of-turn token that closes
    every turn of a chat prompt (so the model would talk on to its limit).
    """
    if penalty == 1.0 or not seen.numel():
        return logits
    scores = logits.gather(-1, seen)
    return logits.scatter(-1, seen, torch.where(scores < 0, scores * penalty, scores / penalty))
