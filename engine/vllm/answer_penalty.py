"""The embedded engine's repetition penalty inside a vLLM server: on the answer's own tokens, not the prompt's.

vLLM's ``repetition_penalty`` also penalizes every prompt token, which pushes
a grounded answer away from the words of its sources and the format its
system prompt names (see :func:`engine.sampling.penalize_repeats`). This
logits processor applies Switchboard's penalty instead, so both engines choose
the same tokens. It runs inside the server: the launcher
(:mod:`engine.vllm.launch`) loads it with
``--logits-processors engine.vllm.answer_penalty:AnswerRepetitionPenalty``, and a
request asks for it with ``vllm_xargs={"answer_repetition_penalty": p}``.
"""

from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from engine.sampling import penalize_repeats

XARG = "answer_repetition_penalty"


class AnswerRepetitionPenalty(AdapterLogitsProcessor):
    def is_argmax_invariant(self) -> bool:
        return False  # a penalty changes which token is greatest

    def new_req_logits_processor(self, params):
        penalty = float((params.extra_args or {}).get(XARG, 1.0))
        if penalty == 1.0:
            return None

        def apply(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
            if not output_ids:
                return logits
            return penalize_repeats(logits, torch.tensor(output_ids, device=logits.device), penalty)

        return apply
