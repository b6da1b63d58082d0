"""Exact and near-duplicate removal for training chats.

A question asked fifty times with the same answer weighs fifty times in the
loss, and a duplicate that lands in both the training and held-out splits
makes the held-out loss a lie. Exact duplicates are caught by a hash of the
normalised text; near duplicates (a changed word, different spacing or
punctuation) by MinHash over token bigrams, with words for English and
characters for Chinese, and locality-sensitive banding so the cost stays linear.
Candidates from the bands are confirmed with the true Jaccard similarity.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

import numpy as np

from training.text import tokens

SHINGLE = 2
PERMUTATIONS = 64
BANDS = 16
_PRIME = (1 << 61) - 1


def shingles(units: list[str]) -> set[str]:
    if len(units) <= SHINGLE:
        return {" ".join(units)}
    return {" ".join(units[i : i + SHINGLE]) for i in range(len(units) - SHINGLE + 1)}


def _hash64(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest(), "little") & _PRIME


class NearDuplicates:
    """Keeps texts one at a time, answering whether each resembles one kept before."""

    def __init__(self, threshold: float = 0.7, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.threshold = threshold
        self._a = rng.integers(1, _PRIME, PERMUTATIONS, dtype=np.uint64)
        self._b = rng.integers(0, _PRIME, PERMUTATIONS, dtype=np.uint64)
        self._exact: set[str] = set()
        self._bands: defaultdict[tuple, list[int]] = defaultdict(list)
        self._kept: list[set[str]] = []

    def _signature(self, grams: set[str]) -> np.ndarray:
        hashes = np.array([_hash64(g) for g in grams], dtype=np.uint64)
        # (a * h + b) mod p in uint64 wraps, which is fine for a hash family: only the minimum's identity matters.
        return (np.outer(self._a, hashes) + self._b[:, None]).min(axis=1)

    def check(self, text: str) -> str | None:
        """``"exact"`` or ``"near"`` if ``text`` duplicates a kept text; otherwise keep it and return None."""
        units = tokens(text)
        key = hashlib.sha256(" ".join(units).encode("utf-8")).hexdigest()
        if key in self._exact:
            return "exact"
        grams = shingles(units)
        signature = self._signature(grams)
        rows = PERMUTATIONS // BANDS
        bands = [(i, signature[i * rows : (i + 1) * rows].tobytes()) for i in range(BANDS)]
        candidates = {index for band in bands for index in self._bands.get(band, ())}
        for index in candidates:
            other = self._kept[index]
            if len(grams & other) / len(grams | other) >= self.threshold:
                return "near"
        self._exact.add(key)
        for band in bands:
            self._bands[band].append(len(self._kept))
        self._kept.append(grams)
        return None
