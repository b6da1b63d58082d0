"""Per-request generation options and the token choice of one decoding step.

Each row of a batch carries its own options (temperature, top-p, repetition
penalty, seed), so requests for different users can share a forward pass.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field

from core.settings import GenerationDefaults

# Below this temperature a row decodes greedily. logits / T overflows float32 long before T reaches 0
# (at 1e-300 every score is inf, inf - inf is NaN, and the draw fails), while at 1e-5 a score lead of
# 0.001 already weighs e^100 to 1: the distribution is the argmax, so sampling it would change nothing.
GREEDY_BELOW = 1e-5
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes
MAX_STOP_STRINGS = 16


class GenerationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(256, ge=1, le=8192, description="Tokens generated at most.")
    temperature: float = Field(0.0, ge=0.0, le=5.0, description="0 decodes greedily.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus mass when sampling.")
    repetition_penalty: float = Field(1.0, ge=1.0, le=3.0, description="CTRL-style penalty on seen tokens.")
    stop: list[str] = Field(
        default_factory=list, max_length=MAX_STOP_STRINGS, description="Generation ends before the first of these strings."
    )
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1], description="Makes sampling repeatable.")
    ignore_eos: bool = Field(False, description="Keep generating past end-of-turn (benchmarks need equal lengths).")

    @classmethod
    def from_defaults(cls, defaults: GenerationDefaults, **overrides) -> GenerationOptions:
        values = defaults.model_dump()
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)


class RowSampler:
    """Draws one row's token when it samples; holds the row's random generator (None: the row decodes greedily)."""

    def __init__(self, options: GenerationOptions, device: torch.device) -> None:
        self.options = options
        self.generator: torch.Generator | None = None
        if options.temperature >= GREEDY_BELOW:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(options.seed if options.seed is not None else torch.seed())

    def sample(self, logits: torch.Tensor) -> int:
        """A token drawn from this row's (vocab,) scores, already penalized, at its temperature and top-p."""
        probs = torch.softmax(logits / self.options.temperature, dim=-1)
        if not math.isfinite(float(probs.sum())):
            raise FloatingPointError(f"the token distribution is not finite at temperature {self.options.temperature}")
        if self.options.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < self.options.top_p
            keep[0] = True  # a top_p below float32's smallest value (1e-300) rounds to 0 and would keep nothing
            sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
            choice = torch.multinomial(sorted_probs, 1, generator=self.generator)
            return int(order[choice])
        return int(torch.multinomial(probs, 1, generator=self.generator))


def choose_tokens(
    logits: torch.Tensor, samplers: list[RowSampler], answers: list[list[int]]
) -> list[int | Exception]:
    """The next token of every row of a step, from its (rows, vocab) scores and each row's answer so far.

    The whole batch takes one repetition-penalty pass per penalty value in use and one argmax, instead
    of a few small operations per row: on a CPU, per-row work is what makes a wide step cost more
    than a narrow one. A row's scores go through the same arithmetic whatever else is in the batch,
    so its greedy choice is the one it makes alone. A row whose draw fails gets its exception in place
    of a token, so it alone ends.
    """
    logits = logits.float()
    for penalty in {s.options.repetition_penalty for s in samplers} - {1.0}:
        rows = [i for i, (s, a) in enumerate(zip(samplers, answers)) if s.options.repetition_penalty == penalty and a]
        if not rows:
            continue
        width = max(len(answers[i]) for i in rows)
        # Rows are padded with a repeat of their own first token: scattering the same value twice is harmless.
        seen = torch.tensor([answers[i] + answers[i][:1] * (width - len(answers[i])) for i in rows], device=logits.device)
        if len(rows) == len(samplers):
            logits = penalize_repeats(logits, seen, penalty)
        else:
            index = torch.tensor(rows, device=logits.device)
            logits = logits.index_copy(0, index, penalize_repeats(logits.index_select(0, index), seen, penalty))
    greedy = logits.argmax(dim=-1).tolist()
    return [greedy[i] if s.generator is None else _draw(s, logits[i]) for i, s in enumerate(samplers)]


def _draw(sampler: RowSampler, logits: torch.Tensor) -> int | Exception:
    try:
        return sampler.sample(logits)
    except (RuntimeError, FloatingPointError) as exc:  # torch.multinomial refuses NaN, inf and all-zero weights
        return exc


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
