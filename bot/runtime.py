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


def make_encoder(settings: Settings):
    """The configured sentence encoder (not loaded yet); its ONNX export is cached under the home's models/."""
    from knowledge.embeddings import SentenceEncoder

    return SentenceEncoder(settings.embedding_model, backend=settings.embedding_backend, cache_dir=settings.models_dir)


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
    def scheduler(self):
        """The one worker that batches every caller's generations (continuous batching across adapters)."""
        from bot.scheduler import Scheduler

        return Scheduler(self.engine, self.settings.scheduler).start()

    @cached_property
    def encoder(self):
        """One embedding model for the router and the knowledge base."""
        return make_encoder(self.settings)

    @cached_property
    def knowledge(self):
        from knowledge import KnowledgeBase

        return KnowledgeBase(self.settings, self.encoder)

    # --- chat product: the conversation log and the chat pipeline ---

    @cached_property
    def log(self):
        """The SQLite conversation log every turn and rating goes to."""
        from bot.conversations import ConversationLog

        return ConversationLog(self.settings.conversations_db)

    @cached_property
    def pipeline(self):
        """Route → retrieve → prompt → generate → log, for the API, the UI and the CLI."""
        from bot.pipeline import Pipeline

        return Pipeline(self)

    # --- end chat product ---

    @cached_property
    def training_runs(self):
        """The one manager of background training runs, shared by the admin API and the UI.

        Sharing it is what makes "one run at a time" hold across both edges and
        lets either look up, by its id, a run the other started.
        """
        from training.runs import RunManager

        return RunManager(self)

    # --- router: routing examples of the enabled adapters, kept in step with the registry ---

    @cached_property
    def router(self):
        """The router over the registry's enabled adapters, sharing the knowledge base's encoder."""
        from bot.router import Router

        router = Router(self.encoder, self.settings.router)
        revision = self.registry.revision()  # read before listing: a change during the sync is caught next time
        router.sync(self.registry.list(), revision=revision)
        return router

    def refresh_router(self) -> bool:
        """Re-sync the router if the registry changed on disk, here or in another process; True if it did.

        Costs one small file read when nothing changed, so callers may run it
        before every turn. A router not built yet is left alone: it syncs when
        first used.
        """
        if "router" not in self.__dict__:
            return False
        revision = self.registry.revision()
        if revision == self.router.revision:
            return False
        self.router.sync(self.registry.list(), revision=revision)
        return True

    # --- end router ---

    def enabled_adapter(self, name: str) -> Manifest:
        """The served version of an adapter, or a clear error when it cannot be served."""
        manifest = self.registry.get(name)
        if not manifest.enabled:
            raise NotFoundError(f"adapter {name!r} is disabled (switchboard adapters enable {name})")
        return manifest
