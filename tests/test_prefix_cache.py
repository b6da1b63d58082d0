"""The prefix cache's memory budget: least recently used entries go first, per-adapter entries go with it."""

from __future__ import annotations

import torch

from engine.prefix_cache import PrefixCache


def layers(tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two layers of float32 keys and values for ``tokens`` tokens: 2 x 2 x tokens x 16 x 4 bytes."""
    return [(torch.randn(1, 1, tokens, 16), torch.randn(1, 1, tokens, 16)) for _ in range(2)]


def test_entries_past_the_byte_budget_drop_the_least_recently_used():
    cache = PrefixCache(max_bytes=3 * 1024)  # three 4-token entries of 1 KB each
    for adapter in ("a", "b", "c"):
        cache.put(adapter, (1, 2, 3, 4), layers(4))
    assert (len(cache), cache.nbytes) == (3, 3 * 1024)
    assert cache.get("a", (1, 2, 3, 4)) is not None  # "a" is now the most recently used
    cache.put("d", (1, 2, 3, 4), layers(4))
    assert cache.get("b", (1, 2, 3, 4)) is None  # "b" was the least recently used
    assert [cache.get(k, (1, 2, 3, 4)) is not None for k in ("a", "c", "d")] == [True, True, True]
    assert (cache.hits, cache.misses) == (4, 1)


def test_an_entry_larger_than_the_budget_is_not_kept_and_replacing_one_counts_it_once():
    cache = PrefixCache(max_bytes=2 * 1024)
    cache.put(None, (7,), layers(4))
    cache.put(None, (7,), layers(4))
    assert (len(cache), cache.nbytes) == (1, 1024)
    cache.put("big", (8,), layers(12))  # 3 KB: not kept, rather than pushing out everything and still not fitting
    assert (len(cache), cache.nbytes) == (1, 1024)
    assert cache.get("big", (8,)) is None


def test_dropping_an_adapter_frees_only_its_entries():
    cache = PrefixCache(max_bytes=10 * 1024)
    cache.put("a", (1,), layers(4))
    cache.put("a", (2,), layers(4))
    cache.put(None, (1,), layers(4))
    cache.drop("a")
    assert (len(cache), cache.nbytes) == (1, 1024)
    assert cache.get(None, (1,)) is not None
