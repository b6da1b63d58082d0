"""The gate between a trained candidate and the registry.

A candidate becomes the next version only when it is better where it was
trained (lower held-out loss than the version being served, or than the base
for a new adapter) and has not forgotten general ability (general-prompt
perplexity within the margin of the base). Otherwise nothing changes and the
reasons say why; ``force`` installs anyway and is recorded in the manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from training.evaluate import BASE, CANDIDATE, LIVE, LossReport


@dataclass
class GateDecision:
    passed: bool = field(metadata={"help": "Both checks passed."})
    install: bool = field(metadata={"help": "Passed, or forced."})
    forced: bool
    reasons: list[str] = field(metadata={"help": "One line per check, passed or not."})
    compared_with: str = field(metadata={"help": "'live' when a version is served, else 'base'."})

    def to_dict(self) -> dict:
        return asdict(self)


def decide(
    held_out: dict[str, LossReport], regression: dict[str, LossReport], margin: float, force: bool = False
) -> GateDecision:
    reasons: list[str] = []
    reference = LIVE if LIVE in held_out else BASE
    candidate, against = held_out.get(CANDIDATE), held_out.get(reference)
    if candidate is None or against is None or not candidate.tokens:
        beats = False
        reasons.append("no held-out examples to compare on")
    else:
        beats = candidate.loss < against.loss
        verb = "beats" if beats else "does not beat"
        reasons.append(f"held-out loss {candidate.loss:.4f} {verb} the {reference}'s {against.loss:.4f}")
    base_ppl, cand_ppl = regression[BASE].perplexity, regression[CANDIDATE].perplexity
    limit = base_ppl * (1 + margin)
    keeps = cand_ppl <= limit
    rise = cand_ppl / base_ppl - 1
    reasons.append(
        f"general perplexity {cand_ppl:.3f} is {rise:+.1%} against the base's {base_ppl:.3f} "
        f"({'within' if keeps else 'over'} the {margin:.0%} margin)"
    )
    passed = beats and keeps
    if force and not passed:
        reasons.append("installed anyway: --force")
    return GateDecision(passed=passed, install=passed or force, forced=force and not passed, reasons=reasons, compared_with=reference)
