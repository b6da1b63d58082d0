"""The running batch of iteration-level (continuous) batching.

Rows join between decoding steps and leave as soon as they finish. A joining
group is prefilled in its own forward pass, which starts from the cached keys
and values of each row's system prompt (:mod:`engine.prefix_cache`) and computes
only the rest of its prompt; its KV cache is then merged into
the running one: both are left-padded to a common length (the padding is
masked out) and concatenated along the batch axis. A finished row is dropped by
index-selecting the batch axis of every layer, and cache columns that no
remaining row attends to are trimmed, so a long request that leaves does not
keep widening the others' attention.

Each row keeps its own adapter, position ids, sampler and stream, so its
greedy output equals what it produces alone. The caller holds the engine's
lock around each call: adapters may be loaded or evicted only between steps.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from engine.decoding import DecodeRow
from engine.prefix_cache import Layers
from engine.sampling import choose_tokens

log = logging.getLogger(__name__)


def _left_pad(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Zeros prepended along ``dim`` (a sequence axis) up to ``width``."""
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    pads = [0, 0] * (tensor.dim() - 1 - dim) + [missing, 0]
    return F.pad(tensor, pads)


def _stack_prefixes(prefixes: list[Layers | None], width: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the rows' prefix keys and values left-padded to ``width`` columns (a row without one: all padding)."""
    template = next(layers for layers in prefixes if layers is not None)
    blank = [(keys[:, :, :0], values[:, :, :0]) for keys, values in template]
    return [
        tuple(torch.cat([_left_pad((layers or blank)[layer][j], width, 2) for layers in prefixes]) for j in (0, 1))
        for layer in range(len(template))
    ]


class Batch:
    """Rows decoding together: one KV cache, one attention mask, per-row positions and adapters."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.rows: list[DecodeRow] = []
        self._cache = None
        self._mask: torch.Tensor | None = None  # (rows, cached columns); 0 marks padding
        self._positions: torch.Tensor | None = None  # (rows,) position id of each row's next token
        self._last: torch.Tensor | None = None  # (rows,) the token each row feeds into the next step

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def adapters(self) -> list[str | None]:
        return [row.request.adapter for row in self.rows]

    @property
    def width(self) -> int:
        """Cached columns every row attends over (its own tokens plus left padding)."""
        return 0 if self._mask is None else self._mask.shape[1]

    @torch.inference_mode()
    def admit(self, rows: list[DecodeRow]) -> list[DecodeRow]:
        """Prefill ``rows``, choose their first tokens and merge them in; returns the rows already finished."""
        if not rows:
            return []
        engine = self.engine
        adapters = [row.request.adapter for row in rows]
        engine.activate(adapters)
        engine.hold(adapters)
        try:
            cache, ids, mask, positions = self._prefill_inputs(rows, [engine.prefix_layers(row) for row in rows])
            out = engine.forward(ids, mask, positions, cache, adapters, also=self.adapters)
            last = self._choose(rows, out.logits[:, -1, :])
        except BaseException:
            engine.release(adapters)
            raise
        positions = mask.sum(-1)
        if self._cache is None:
            self._cache, self._mask, self._positions, self._last = cache, mask, positions, last
        else:
            self._merge(cache, mask, positions, last)
        self.rows.extend(rows)
        return self.retire()

    def _prefill_inputs(self, rows: list[DecodeRow], prefixes: list[Layers | None]) -> tuple:
        """The pass's cache, input ids, attention mask and position ids: cached prefixes, then the prompts' rest.

        Row ``i`` attends over ``[pad, its prefix, pad, the rest of its prompt]``: the prefixes fill the
        cache's first columns (all padding for a row without one) and the rest of each prompt is the input.
        """
        from transformers import DynamicCache

        engine = self.engine
        lengths = [0 if layers is None else layers[0][0].shape[2] for layers in prefixes]
        width = max(len(row.prompt_ids) - length for row, length in zip(rows, lengths))
        cached = max(lengths)
        ids = torch.full((len(rows), width), engine.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), cached + width), dtype=torch.long)
        for i, (row, length) in enumerate(zip(rows, lengths)):
            rest = row.prompt_ids[length:]
            ids[i, width - len(rest) :] = torch.tensor(rest)
            mask[i, cached - length : cached] = 1
            mask[i, cached + width - len(rest) :] = 1
        cache = DynamicCache(_stack_prefixes(prefixes, cached)) if cached else DynamicCache()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, cached:]
        return cache, ids.to(engine.device), mask.to(engine.device), positions.to(engine.device)

    def _merge(self, cache, mask: torch.Tensor, positions: torch.Tensor, last: torch.Tensor) -> None:
        from transformers import DynamicCache

        width = max(self.width, mask.shape[1])
        layers = [
            (
                torch.cat([_left_pad(old_k, width, 2), _left_pad(new_k, width, 2)]),
                torch.cat([_left_pad(old_v, width, 2), _left_pad(new_v, width, 2)]),
            )
            for (old_k, old_v, _), (new_k, new_v, _) in zip(self._cache, cache)
        ]
        self._cache = DynamicCache(layers)
        self._mask = torch.cat([_left_pad(self._mask, width, 1), _left_pad(mask, width, 1)])
        self._positions = torch.cat([self._positions, positions])
        self._last = torch.cat([self._last, last])

    @torch.inference_mode()
    def step(self) -> list[DecodeRow]:
        """One decoding step for every row; returns the rows that finished."""
        if not self.rows:
            return []
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(self.rows), 1))], dim=1)
        out = self.engine.forward(self._last[:, None], self._mask, self._positions[:, None], self._cache, self.adapters)
        self._last = self._choose(self.rows, out.logits[:, -1, :])
        self._positions = self._positions + 1
        return self.retire()

    def _choose(self, rows: list[DecodeRow], logits: torch.Tensor) -> torch.Tensor:
        """Each row's next token (padding for a finished row), pushed to its stream; the tokens the next step feeds.

        A row whose choice or stream fails ends alone (:meth:`DecodeRow.fail`) and is retired with the
        finished ones; the other rows of the step keep their tokens.
        """
        pad = self.engine.tokenizer.pad_token_id
        chosen = choose_tokens(logits, [row.sampler for row in rows], [row.generated for row in rows])
        tokens = []
        for row, token in zip(rows, chosen):
            if isinstance(token, Exception):
                log.error("sampling failed for one row (%s: %s); ending that request", type(token).__name__, token)
                row.fail(token)
            try:
                row.push(pad if row.done else token)
            except Exception as exc:
                log.exception("one row failed after its token was chosen; ending that request")
                row.fail(exc)
            tokens.append(pad if row.done else token)
        return torch.tensor(tokens, dtype=torch.long, device=self.engine.device)

    def retire(self) -> list[DecodeRow]:
        """Drop finished (or cancelled) rows from the batch and the cache; returns them."""
        finished = [row for row in self.rows if row.done]
        if not finished:
            return []
        self.engine.release([row.request.adapter for row in finished])
        keep = [i for i, row in enumerate(self.rows) if not row.done]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self._cache = self._mask = self._positions = self._last = None
            return finished
        index = torch.tensor(keep, dtype=torch.long, device=self._mask.device)
        self._cache.batch_select_indices(index)
        self._mask, self._positions, self._last = self._mask[index], self._positions[index], self._last[index]
        self._trim()
        return finished

    def _trim(self) -> None:
        """Cut leading columns that are padding for every remaining row."""
        from transformers import DynamicCache

        first = int(self._mask.any(dim=0).int().argmax())
        if first == 0:
            return
        self._cache = DynamicCache([(k[:, :, first:], v[:, :, first:]) for k, v, _ in self._cache])
        self._mask = self._mask[:, first:]

    def abandon(self) -> list[DecodeRow]:
        """Cancel every row (after a failed pass, or at shutdown) and empty the batch; returns the rows."""
        for row in self.rows:
            row.cancel()
        return self.retire()
