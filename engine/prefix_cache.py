"""Key/value caches of system prompts, per adapter, so a request prefills only what follows its system prompt.

Every request to an assistant starts with the same tokens: the chat template's
system block (the assistant's system prompt and the grounding rules when
sources are given, or the template's own default system message when there is
none) and the header of the user's turn. Their keys and values depend only on those
tokens and on the adapter (its LoRA changes the key and value projections), so
they are computed once, in a pass of their own, and reused: the first request
and every later one read the same cached tensors, and a greedy answer does not
depend on whether the cache was warm. (vLLM's automatic prefix caching and
SGLang's radix cache generalise this to any shared prefix.)

An entry costs 46 KB a token on SmolLM2 (30 layers x 2 x 3 heads x 64 x 4
bytes; a 7B model in bfloat16 about 130 KB): a 60-token system block is 2.8 MB.
The least recently used entries are dropped once the entries together pass
``max_bytes``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

Layers = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values, (1, heads, tokens, head_dim)


class PrefixCache:
    """LRU map from (adapter key, prefix token ids) to the prefix's keys and values in every layer."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str | None, tuple[int, ...]], Layers] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, adapter: str | None, ids: tuple[int, ...]) -> Layers | None:
        layers = self._entries.get((adapter, ids))
        if layers is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end((adapter, ids))
        return layers

    @property
    def nbytes(self) -> int:
        return self._bytes

    def put(self, adapter: str | None, ids: tuple[int, ...], layers: Layers) -> None:
        """Keep an entry (one larger than ``max_bytes`` is not kept), dropping the least recently used past the budget."""
        size = _size(layers)
        self._remove((adapter, ids))
        if size > self.max_bytes:
            return
        self._entries[(adapter, ids)] = layers
        self._bytes += size
        while self._bytes > self.max_bytes:
            self._remove(next(iter(self._entries)))

    def drop(self, adapter: str | None) -> None:
        """Forget an adapter's prefixes (it was unloaded: its key will not be asked for again)."""
        for key in [k for k in self._entries if k[0] == adapter]:
            self._remove(key)

    def _remove(self, key: tuple[str | None, tuple[int, ...]]) -> None:
        layers = self._entries.pop(key, None)
        if layers is not None:
            self._bytes -= _size(layers)


def _size(layers: Layers) -> int:
    return sum(t.numel() * t.element_size() for pair in layers for t in pair)
