"""Wiring: one place that builds each long-lived part once, on first use.

The CLI, the HTTP server and the UI all take their parts from a Runtime, so
the base model, the encoder and the stores are each loaded once per process,
and a command that only lists adapters never loads a model.
"""

from __future__ import annotations

from functools import cached_property

from adapters.manifest import BaseFingerprint, Manifest
from adapters.registry import Registry
from adapters.validation import AdapterLimits
from bot.errors import NotFoundError
from bot.settings import Settings


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)

    @cached_property
    def fingerprint(self) -> BaseFingerprint:
        if "engine" in self.__dict__:
            return self.engine.fingerprint
        from bot.base_model import base_fingerprint

        return base_fingerprint(self.settings)

    @cached_property
    def registry(self) -> Registry:
        limits = AdapterLimits(max_bytes=self.settings.max_adapter_bytes)
        return Registry(self.settings.adapters_dir, self.fingerprint, limits)

    @cached_property
    def engine(self):
        from bot.engine import Engine

        return Engine(self.settings)

    @cached_property
    def encoder(self):
        """One embedding model for the router and the knowledge base."""
        from knowledge.embeddings import SentenceEncoder

        return SentenceEncoder(self.settings.embedding_model)

    @cached_property
    def knowledge(self):
        from knowledge import KnowledgeBase

        return KnowledgeBase(self.settings, self.encoder)

    def enabled_adapter(self, name: str) -> Manifest:
        """The served version of an adapter, or a clear error when it cannot be served."""
        manifest = self.registry.get(name)
        if not manifest.enabled:
            raise NotFoundError(f"adapter {name!r} is disabled (switchboard adapters enable {name})")
        return manifest
