"""Which adapter answers a message, and how sure the router is of it.

Semantic-router style: every enabled adapter brings routing examples (and
optional keywords) from its manifest; a message scores against each adapter
by its similarity to that adapter's nearest examples, and when no adapter
reaches the threshold the base model answers.

The similarity has two channels because the shared encoder may not read every
script. all-MiniLM-L6-v2 maps most Chinese characters to [UNK], so the cosine
of two Chinese sentences is noise (「番茄炒蛋怎么做？」, a recipe question,
scores 0.99 against 「怎么退货？」, how to return goods). The dense channel
therefore embeds only the text the encoder reads (Chinese runs are cut out
when it cannot read them), and a
lexical channel (TF-IDF over words, Chinese segmented by jieba and folded to
Simplified script) covers the rest. Each channel is weighted by its share of
the message's words: English routes by meaning, Chinese by shared words, and
a mixed message by both. A multilingual encoder reads everything, and the
dense channel alone decides.

Embeddings are kept per example text across :meth:`Router.sync` calls, so
installing, removing, enabling or disabling an adapter embeds only examples
not seen before. Each sync builds a new immutable index and swaps it in:
``route`` never sees a half-updated router.
"""

from __future__ import annotations

import functools
import math
import re
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from adapters.manifest import Manifest
from adapters.registry import Registry
from core.errors import InvalidRequestError, NotFoundError
from core.settings import RouterConfig
from knowledge.embeddings import Encoder
from knowledge.lexical import tokenize

AUTO = "auto"
BASE = "base"
CJK_RUN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]+")
_LETTER = re.compile(r"[^\W_]")
# Common words of both Chinese scripts; an encoder that maps many of them to [UNK] cannot read Chinese.
_CJK_PROBE = "请问退货运费怎么算？請問保修期多久？"
_MAX_UNKNOWN_SHARE = 0.2


@dataclass(frozen=True)
class Route:
    """The router's decision for one message."""

    adapter: str | None = field(metadata={"help": "Adapter that answers; None means the base model."})
    confidence: float = field(
        metadata={"help": "The chosen adapter's routing score (its examples); for the base, 1 minus the best one."}
    )
    scores: dict[str, float] = field(
        default_factory=dict, metadata={"help": "Score in [0, 1] of every routable adapter; empty when not routed."}
    )
    reason: str = field(
        default="routed",
        metadata={
            "help": "routed, retrieval (its documents answer the message, its examples do not cover it), follow-up, "
            "below-threshold, no-adapters (nothing to route to) or requested."
        },
    )
    retrieval: dict[str, float] = field(
        default_factory=dict,
        metadata={"help": "Relevance in [0, 1] of the best passage in each adapter's collections; empty when unused."},
    )

    def to_dict(self) -> dict:
        """What ``switchboard route --json`` prints."""
        return {
            "adapter": self.adapter,
            "confidence": round(self.confidence, 4),
            "scores": {name: round(score, 4) for name, score in self.scores.items()},
            "retrieval": {name: round(score, 4) for name, score in self.retrieval.items()},
            "reason": self.reason,
        }


@dataclass(frozen=True)
class SyncReport:
    """What one :meth:`Router.sync` changed."""

    added: list[str] = field(metadata={"help": "Adapters the router did not know before."})
    updated: list[str] = field(metadata={"help": "Adapters whose version, examples or keywords changed."})
    removed: list[str] = field(metadata={"help": "Adapters dropped: removed or disabled."})
    embedded: int = field(metadata={"help": "Example texts embedded by this sync; the rest were reused."})


def check_message(message: object) -> str:
    """The message stripped; an empty or non-text message is the caller's error."""
    if not isinstance(message, str):
        raise InvalidRequestError("the message must be text")
    text = message.strip()
    if not text:
        raise InvalidRequestError("the message is empty")
    return text


@dataclass(frozen=True)
class _Entry:
    """One adapter's routing material; kept across syncs while its signature holds."""

    name: str
    signature: tuple
    texts: tuple[str, ...]  # embedded text of each readable example
    vectors: np.ndarray  # one row per readable example
    tokens: tuple[tuple[str, ...], ...]  # lexical tokens of every example
    keywords: tuple[frozenset[str], ...]  # each keyword's tokens; all must occur
    collections: tuple[str, ...]  # knowledge collections it answers from; retrieval there can route to it

    @property
    def routable(self) -> bool:
        return bool(self.tokens or self.keywords or self.collections)


class _Lexical:
    """TF-IDF over every routing example; an adapter's lexical score is its nearest example's cosine.

    The square root of that cosine is returned: two short sentences that
    share one or two informative words have a cosine of 0.1-0.3, while
    embeddings of sentences that related score 0.3-0.6. The root puts both
    channels on one scale, so a single threshold serves English and Chinese.
    """

    def __init__(self, groups: list[tuple[tuple[str, ...], ...]]) -> None:
        documents = [tokens for group in groups for tokens in group]
        count = len(documents)
        frequency = Counter(token for tokens in documents for token in set(tokens))
        self._idf = {token: math.log((count + 1) / (n + 1)) + 1 for token, n in frequency.items()}
        self._unseen_idf = math.log(count + 1) + 1
        self._postings: dict[str, list[tuple[int, float]]] = {}
        for row, tokens in enumerate(documents):
            for token, weight in self._weights(tokens).items():
                self._postings.setdefault(token, []).append((row, weight))
        self._size = count
        self._starts = np.cumsum([0] + [len(group) for group in groups[:-1]]).astype(np.intp)
        self._empty = np.array([len(group) == 0 for group in groups], dtype=bool)

    def _weights(self, tokens: Iterable[str]) -> dict[str, float]:
        counts = Counter(tokens)
        weights = {t: n * self._idf.get(t, self._unseen_idf) for t, n in counts.items()}
        norm = math.sqrt(sum(w * w for w in weights.values())) or 1.0
        return {t: w / norm for t, w in weights.items()}

    def scores(self, tokens: list[str]) -> np.ndarray:
        if not self._size:
            return np.zeros(len(self._empty), dtype=np.float32)
        dots = np.zeros(self._size + 1, dtype=np.float64)  # a sentinel row keeps reduceat in bounds
        for token, weight in self._weights(tokens).items():
            for row, example_weight in self._postings.get(token, ()):
                dots[row] += weight * example_weight
        nearest = np.maximum.reduceat(dots, np.minimum(self._starts, self._size))[: len(self._empty)]
        nearest[self._empty] = 0.0
        return np.sqrt(np.clip(nearest, 0.0, 1.0)).astype(np.float32)


@dataclass(frozen=True)
class _Index:
    """Everything ``route`` reads, built whole by ``sync`` and swapped in at once."""

    names: frozenset[str]  # every enabled adapter, routable or only reachable by name
    entries: tuple[_Entry, ...]  # the routable ones, in name order
    matrix: np.ndarray  # readable example vectors of all routable adapters, stacked
    bounds: tuple[tuple[int, int], ...]  # each entry's rows in matrix
    lexical: _Lexical

    @classmethod
    def build(cls, entries: dict[str, _Entry], dim: int) -> _Index:
        routable = tuple(entries[name] for name in sorted(entries) if entries[name].routable)
        bounds, start = [], 0
        for entry in routable:
            bounds.append((start, start + len(entry.vectors)))
            start += len(entry.vectors)
        blocks = [e.vectors for e in routable if len(e.vectors)]
        matrix = np.vstack(blocks) if blocks else np.zeros((0, dim), dtype=np.float32)
        return cls(frozenset(entries), routable, matrix, tuple(bounds), _Lexical([e.tokens for e in routable]))

    def dense_scores(self, vector: np.ndarray, top_k: int) -> np.ndarray:
        """Mean cosine of each adapter's ``top_k`` nearest readable examples (0 without any)."""
        similarities = self.matrix @ vector
        scores = np.zeros(len(self.entries), dtype=np.float32)
        for i, (start, end) in enumerate(self.bounds):
            if end > start:
                k = min(top_k, end - start)
                scores[i] = np.partition(similarities[start:end], end - start - k)[-k:].mean()
        return np.clip(scores, 0.0, 1.0)


class Router:
    """Routes messages to the enabled adapters it was last synced with; safe to share between threads."""

    def __init__(self, encoder: Encoder, config: RouterConfig) -> None:
        self.encoder = encoder
        self.config = config
        self._entries: dict[str, _Entry] = {}
        self._index = _Index.build({}, 0)
        self._sync_lock = threading.Lock()
        self.revision: int | None = None  # the source's revision at the last sync (e.g. the registry's)

    @property
    def adapters(self) -> list[str]:
        """Every enabled adapter the router knows, routable or not."""
        return sorted(self._index.names)

    @property
    def routable(self) -> list[str]:
        """The adapters routing can choose: those with examples or keywords."""
        return [entry.name for entry in self._index.entries]

    def collections(self) -> dict[str, tuple[str, ...]]:
        """The knowledge collections of every routable adapter that has some: where retrieval can route to."""
        return {entry.name: entry.collections for entry in self._index.entries if entry.collections}

    @functools.cached_property
    def reads_cjk(self) -> bool:
        """Whether the encoder's vocabulary covers Chinese, Japanese and Korean text."""
        tokenizer = getattr(self.encoder, "tokenizer", None)
        unknown = getattr(tokenizer, "unk_token", None)
        if unknown is None:
            return True
        tokens = tokenizer.tokenize(_CJK_PROBE)
        return tokens.count(unknown) / len(tokens) <= _MAX_UNKNOWN_SHARE

    def _readable(self, text: str) -> str:
        """The part of ``text`` the encoder can read; empty when there is none."""
        readable = text if self.reads_cjk else CJK_RUN.sub(" ", text)
        return " ".join(readable.split()) if _LETTER.search(readable) else ""

    def sync(self, manifests: Iterable[Manifest], revision: int | None = None) -> SyncReport:
        """Route to exactly the enabled ones of ``manifests``; embed only example texts not embedded before.

        A disabled adapter's embeddings are kept while it stays installed, so
        enabling it again costs nothing. ``revision`` numbers the state
        ``manifests`` were read at: a sync older than the last one (two
        threads refreshing at once) changes nothing.
        """
        with self._sync_lock:
            if revision is not None and self.revision is not None and revision < self.revision:
                return SyncReport(added=[], updated=[], removed=[], embedded=0)
            known = {text: row for e in self._entries.values() for text, row in zip(e.texts, e.vectors)}
            enabled: dict[str, _Entry] = {}
            dormant: dict[str, _Entry] = {}
            pending: list[str] = []
            added, updated = [], []
            for manifest in sorted(manifests, key=lambda m: m.name):
                cut = self.config.max_chars
                examples = tuple(dict.fromkeys(t.strip()[:cut] for t in manifest.examples if t.strip()))
                keywords = tuple(dict.fromkeys(k.strip() for k in manifest.keywords if k.strip()))
                signature = (manifest.key, examples, keywords, tuple(manifest.collections))
                previous = self._entries.get(manifest.name)
                current = previous if previous is not None and previous.signature == signature else None
                if not manifest.enabled:
                    if current is not None:
                        dormant[manifest.name] = current
                    continue
                if manifest.name not in self._index.names:
                    added.append(manifest.name)
                elif current is None:
                    updated.append(manifest.name)
                if current is None:
                    readable = tuple(dict.fromkeys(r for r in map(self._readable, examples) if r))
                    pending.append(manifest.name)
                    current = _Entry(
                        name=manifest.name,
                        signature=signature,
                        texts=readable,
                        vectors=np.zeros((0, 0), dtype=np.float32),  # filled below, after one batched encode
                        tokens=tuple(tuple(tokenize(t)) for t in examples),
                        keywords=tuple(k for k in (frozenset(tokenize(w)) for w in keywords) if k),
                        collections=tuple(manifest.collections),
                    )
                enabled[manifest.name] = current
            new_texts = list(dict.fromkeys(t for name in pending for t in enabled[name].texts if t not in known))
            if new_texts:
                known.update(zip(new_texts, self.encoder(new_texts)))
            dim = next((len(v) for v in known.values()), 0)
            for name in pending:
                entry = enabled[name]
                vectors = np.array([known[t] for t in entry.texts], dtype=np.float32).reshape(len(entry.texts), dim)
                enabled[name] = _Entry(
                    entry.name, entry.signature, entry.texts, vectors, entry.tokens, entry.keywords, entry.collections
                )
            removed = sorted(self._index.names - set(enabled))
            self._entries = {**dormant, **enabled}
            self._index = _Index.build(enabled, dim)
            self.revision = revision
            return SyncReport(added=added, updated=updated, removed=removed, embedded=len(new_texts))

    def follow(self, registry: Registry) -> bool:
        """Re-sync with the registry if it changed on disk, here or in another process; True if it did.

        Costs one small file read when nothing changed, so callers may run it
        before every turn. The revision is read before listing: a change made
        during the sync is caught by the next call.
        """
        revision = registry.revision()
        if revision == self.revision:
            return False
        self.sync(registry.list(), revision=revision)
        return True

    def scores(self, message: str) -> dict[str, float]:
        """Score in [0, 1] of every routable adapter for ``message`` (no threshold, no conversation)."""
        return self.score_batch([message])[0]

    def score_batch(self, messages: list[str]) -> list[dict[str, float]]:
        """:meth:`scores` of many messages with one batched encoder call (calibration, benchmarks)."""
        return self._score_batch(self._index, [check_message(m)[: self.config.max_chars] for m in messages])

    def embed(self, message: str) -> np.ndarray | None:
        """The vector the router scores ``message`` with (None: nothing the encoder can read).

        The dispatcher embeds a message once and hands this vector to the
        router and to retrieval alike.
        """
        readable = self._readable(check_message(message)[: self.config.max_chars])
        return self.encoder([readable])[0] if readable else None

    def _score_batch(
        self, index: _Index, texts: list[str], vectors: list[np.ndarray] | None = None
    ) -> list[dict[str, float]]:
        if not index.entries:
            return [{} for _ in texts]
        features = []
        for text in texts:
            tokens = tokenize(text)
            readable = self._readable(text)
            if self.reads_cjk or not tokens:
                weight = 1.0 if readable else 0.0
            else:
                weight = sum(1 for t in tokens if not CJK_RUN.search(t)) / len(tokens)
            features.append((tokens, readable, weight if len(index.matrix) else 0.0))
        if vectors is None:
            dense_texts = [readable for _, readable, weight in features if weight > 0]
            vectors = self.encoder(dense_texts) if dense_texts else ()
        else:
            vectors = [v for v, (_, _, weight) in zip(vectors, features) if weight > 0]
        vectors = iter(vectors)
        results = []
        for tokens, _, weight in features:
            similarity = np.zeros(len(index.entries), dtype=np.float32)
            if weight > 0:
                similarity += weight * index.dense_scores(next(vectors), self.config.top_k_examples)
            if weight < 1:
                similarity += (1 - weight) * index.lexical.scores(tokens)
            present = set(tokens)
            scores = {}
            for entry, value in zip(index.entries, similarity.tolist()):
                if any(keyword <= present for keyword in entry.keywords):
                    value += self.config.keyword_boost
                scores[entry.name] = min(1.0, max(0.0, value))
            results.append(scores)
        return results

    def route(
        self,
        message: str,
        previous: str | None = None,
        retrieval: dict[str, float] | None = None,
        vector: np.ndarray | None = None,
    ) -> Route:
        """The adapter for ``message``, or None for the base model.

        ``previous`` is the adapter of the conversation's previous turn: a
        short follow-up ("and for returns?") says too little to route on its
        own, so that adapter gets ``follow_up_bonus`` and keeps the
        conversation unless another adapter still scores higher.

        ``retrieval`` holds, per adapter, the relevance of the best passage in
        its collections. Routing examples cannot foresee every question a
        collection answers, and documents added later change nothing in them;
        so an adapter whose documents answer the message well enough
        (``retrieval_threshold``) may answer even below the routing threshold,
        and among the adapters that may, retrieval adds ``retrieval_weight``
        times its relevance to the routing score.

        ``vector`` is the message's :meth:`embed`, when the caller has it already.
        """
        text = check_message(message)[: self.config.max_chars]
        scores = self._score_batch(self._index, [text], None if vector is None else [vector])[0]
        retrieval = {name: value for name, value in (retrieval or {}).items() if name in scores}
        if not scores:
            return Route(None, 1.0, {}, "no-adapters")
        decisive = dict(scores)
        follow_up = previous in decisive and len(tokenize(text)) <= self.config.follow_up_max_tokens
        if follow_up:
            decisive[previous] += self.config.follow_up_bonus
        by_examples = {name for name, score in decisive.items() if score >= self.config.threshold}
        documents_route = self.config.retrieval_threshold < 1.0  # 1 switches retrieval-aware routing off
        by_documents = {n for n, v in retrieval.items() if documents_route and v >= self.config.retrieval_threshold}
        if not by_examples | by_documents:
            return Route(None, 1.0 - max(scores.values()), scores, "below-threshold", retrieval)
        combined = {
            name: decisive[name] + self.config.retrieval_weight * retrieval.get(name, 0.0)
            for name in by_examples | by_documents
        }
        best = max(combined, key=combined.get)
        if best not in by_examples:
            reason = "retrieval"
        else:
            reason = "follow-up" if follow_up and best == previous else "routed"
        # Confidence stays the examples' score; the documents' relevance is reported beside it, in ``retrieval``.
        return Route(best, min(1.0, decisive[best]), scores, reason, retrieval)

    def choose(
        self,
        message: str,
        requested: str | None = AUTO,
        previous: str | None = None,
        retrieval: dict[str, float] | None = None,
        vector: np.ndarray | None = None,
    ) -> Route:
        """The per-request rule: 'auto' (or None) routes, 'base' answers without an adapter, a name is used as is."""
        text = check_message(message)
        if requested in (None, AUTO):
            return self.route(text, previous, retrieval, vector)
        if requested == BASE:
            return Route(None, 1.0, {}, "requested")
        if requested not in self._index.names:
            enabled = ", ".join(self.adapters) or "none"
            raise NotFoundError(f"no enabled adapter named {requested!r} (enabled: {enabled})")
        return Route(requested, 1.0, {}, "requested")
