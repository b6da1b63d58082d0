"""The check that a batched row decoded greedily as it would alone, up to a rounding tie."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from engine.sampling import penalize_repeats

# This CPU's 4-bit kernels round activations to bfloat16, so a row's logits move by up to ~0.1 with the
# shape of its batch (measured: solo vs batched decoding of the same text). Two candidates closer than this
# are a rounding tie that either order may break; a wrong adapter, position or cache row is off by far more.
TIE = 0.3


def assert_greedy(engine, messages, adapter, generation, penalty: float) -> None:
    """Every token of ``generation`` is the greedy choice (up to a rounding tie) of one solo pass over its text."""
    prompt = engine.render(messages)
    ids = torch.tensor([prompt + list(generation.token_ids)])
    mask = torch.ones_like(ids)
    with torch.inference_mode(), engine.lock:
        engine.activate([adapter])  # it may have been evicted since
        logits = engine.forward(ids, mask, mask.cumsum(-1) - 1, DynamicCache(), [adapter], logits_to_keep=0).logits[0]
    for step, token in enumerate(generation.token_ids):
        scores = logits[len(prompt) - 1 + step].float()
        scores = penalize_repeats(scores, ids[0, len(prompt) : len(prompt) + step], penalty)
        gap = float(scores.max() - scores[token])
        assert gap < TIE, f"token {step} scored {gap:.3f} below the best alone: not a rounding tie"
