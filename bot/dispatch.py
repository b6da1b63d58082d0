"""Where a message goes, and the passages it takes along: routing and retrieval from one query.

Under ``auto`` one retrieval runs over the collections of every routable
adapter (and the base's); how well each adapter's documents answer the
message is a routing signal (:meth:`bot.router.Router.route`), and the chosen
adapter's passages are taken from that same retrieval. The message is
embedded once, and the vector serves both the router and the knowledge base.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from adapters.manifest import Manifest
from adapters.registry import Registry
from bot.router import AUTO, Route, Router
from core.sections import KnowledgeConfig
from knowledge.knowledge_base import KnowledgeBase
from knowledge.passage import Passage


@dataclass(frozen=True)
class Dispatch:
    """One message's route, the registry version that answers it (None: the base) and its passages."""

    route: Route
    manifest: Manifest | None
    collections: list[str]
    passages: list[Passage]
    timings: dict[str, float] = field(default_factory=dict, metadata={"help": "Seconds spent routing and retrieving."})


@dataclass(frozen=True)
class _Candidates:
    """Passages of one retrieval over many collections, best first."""

    passages: list[Passage]
    by_adapter: dict[str, tuple[str, ...]]
    k: int

    def strengths(self) -> dict[str, float]:
        """Relevance of the best passage in each adapter's collections (0 without one)."""
        return {
            name: max((p.score for p in self.passages if p.collection in collections), default=0.0)
            for name, collections in self.by_adapter.items()
        }

    def within(self, collections: list[str]) -> list[Passage]:
        return [p for p in self.passages if p.collection in collections][: self.k]


class Dispatcher:
    def __init__(self, router: Router, registry: Registry, knowledge: KnowledgeBase, config: KnowledgeConfig) -> None:
        self.router = router
        self.registry = registry
        self.knowledge = knowledge
        self.config = config

    def dispatch(self, message: str, requested: str | None = AUTO, previous: str | None = None) -> Dispatch:
        """Route ``message`` (``requested``: 'auto', 'base' or an adapter name) and retrieve its passages."""
        started = time.perf_counter()
        self.router.follow(self.registry)  # adapters installed or disabled by another process
        routed = requested in (None, AUTO)
        # Only routing needs the vector before retrieval; a named adapter's retrieval embeds the query itself, once.
        vector = self.router.embed(message) if routed else None
        embedded = time.perf_counter()
        pool = self._candidates(message, vector) if routed else None
        retrieved = time.perf_counter()
        route = self.router.choose(message, requested, previous, pool.strengths() if pool else None, vector=vector)
        manifest = self.registry.served(route.adapter) if route.adapter else None
        collections = list(manifest.collections) if manifest else list(self.config.default_collections)
        routed_at = time.perf_counter()
        if pool is not None:
            passages = pool.within(collections)
        else:
            passages = self.knowledge.retrieve(message, collections) if collections else []
        timings = {
            "route": (embedded - started) + (routed_at - retrieved),
            "retrieve": (retrieved - embedded) + (time.perf_counter() - routed_at),
        }
        return Dispatch(route, manifest, collections, passages, timings)

    def route(self, message: str, previous: str | None = None) -> Route:
        """Where ``message`` goes under 'auto', with the retrieval signal that took part in the choice."""
        return self.dispatch(message, AUTO, previous).route

    def _candidates(self, message: str, vector) -> _Candidates:
        by_adapter = self.router.collections()
        everything = list(dict.fromkeys([*(c for cs in by_adapter.values() for c in cs), *self.config.default_collections]))
        k = self.config.k
        passages = self.knowledge.retrieve(message, everything, k=k * len(everything), vector=vector) if everything else []
        return _Candidates(passages, by_adapter, k)
