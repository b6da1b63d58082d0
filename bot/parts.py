"""The long-lived parts of one process, each built once, on first use, and handed to what uses it.

The CLI, the HTTP server and the UI take their parts from here, so the base
model, the encoder and the stores are each loaded once per process, and a
command that only lists adapters never loads a model. Nothing below the
product sees this object: the pipeline, a training run and the admin actions
are given the parts they use.
"""

from __future__ import annotations

import logging
import time
from functools import cached_property

from adapters.manifest import BaseFingerprint
from adapters.registry import Registry
from adapters.validation import AdapterLimits
from core.errors import SwitchboardError
from core.settings import Settings

log = logging.getLogger(__name__)


class Parts:
    def __init__(self, settings: Settings, read_only_knowledge: bool = False) -> None:
        """``read_only_knowledge``: read the knowledge base beside a running server, which holds its writer lock
        (``switchboard chat`` and ``route`` write nothing there)."""
        self.settings = settings
        self.read_only_knowledge = read_only_knowledge
        settings.home.mkdir(parents=True, exist_ok=True)

    def built(self, name: str) -> bool:
        """Whether a part was built already (``/health`` and the admin actions leave unbuilt parts alone)."""
        return name in self.__dict__

    def warm(self) -> None:
        """Load every long-lived part before the first request, logging each step."""
        steps = [
            ("base model and engine", lambda: self.engine),
            ("embedding model", lambda: self.encoder),
            ("knowledge base", lambda: self.knowledge),
            ("router", lambda: self.router),
            ("conversation log", lambda: self.log),
        ]
        for label, step in steps:
            started = time.perf_counter()
            log.info("loading %s ...", label)
            step()
            log.info("loaded %s in %.1fs", label, time.perf_counter() - started)
        self.registry.check_installed()  # an adapter damaged on disk is disabled here, never fatal
        enabled = [m for m in self.registry.list() if m.enabled][: self.settings.max_resident_adapters]
        for manifest in enabled:
            started = time.perf_counter()
            try:
                self.engine.activate([self.engine.ensure(manifest)])
            except SwitchboardError as exc:
                log.warning("adapter %s v%d could not be loaded; it loads on demand: %s", manifest.name, manifest.version, exc)
                continue
            log.info("loaded adapter %s v%d in %.1fs", manifest.name, manifest.version, time.perf_counter() - started)

    @cached_property
    def fingerprint(self) -> BaseFingerprint:
        if self.built("engine"):
            return self.engine.fingerprint
        from engine.base_model import base_fingerprint

        return base_fingerprint(self.settings)

    @cached_property
    def registry(self) -> Registry:
        limits = AdapterLimits(max_bytes=self.settings.max_adapter_bytes)
        return Registry(self.settings.adapters_dir, self.fingerprint, limits)

    @cached_property
    def engine(self):
        """The base model and its adapters: in this process, or in the vLLM server of ``engine.url``."""
        if self.settings.engine.backend == "vllm":
            from engine.vllm.engine import VLLMEngine

            return VLLMEngine(self.settings)
        from engine.embedded import Engine

        return Engine(self.settings)

    @cached_property
    def scheduler(self):
        """Where every caller's generations go: one worker batching them here, or the vLLM server's own batching."""
        if self.settings.engine.backend == "vllm":
            from engine.vllm.scheduler import VLLMScheduler

            return VLLMScheduler(self.engine, self.settings.scheduler).start()
        from engine.scheduler import Scheduler

        return Scheduler(self.engine, self.settings.scheduler).start()

    @cached_property
    def encoder(self):
        """One embedding model for the router and the knowledge base."""
        from knowledge.embeddings import encoder_for

        return encoder_for(self.settings)

    @cached_property
    def knowledge(self):
        from knowledge.knowledge_base import KnowledgeBase

        return KnowledgeBase(self.settings, self.encoder, read_only=self.read_only_knowledge)

    @cached_property
    def log(self):
        """The conversation log every turn and rating goes to."""
        from conversations.log import ConversationLog

        return ConversationLog(self.settings.conversations_db)

    @cached_property
    def router(self):
        """The router over the registry's enabled adapters, sharing the knowledge base's encoder."""
        from bot.router import Router

        router = Router(self.encoder, self.settings.router)
        router.follow(self.registry)
        return router

    @cached_property
    def dispatcher(self):
        """Where a message goes and the passages it takes along: routing and retrieval, one query."""
        from bot.dispatch import Dispatcher

        return Dispatcher(self.router, self.registry, self.knowledge, self.settings.knowledge)

    @cached_property
    def pipeline(self):
        """Route → retrieve → prompt → generate → check → log, for the API, the UI and the CLI."""
        from bot.pipeline import Pipeline

        return Pipeline(self.dispatcher, self.engine, self.scheduler, self.log, self.settings)

    @cached_property
    def training_runs(self):
        """The one manager of background training runs, shared by the admin API and the UI.

        Sharing it is what makes "one run at a time" hold across both edges and
        lets either look up, by its id, a run the other started.
        """
        from bot.training_runs import RunManager

        return RunManager(self.settings, self.registry, self.log)

    @cached_property
    def admin(self):
        """The admin actions the API and the UI share."""
        from bot.admin import Admin

        return Admin(self)
