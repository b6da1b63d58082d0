"""Adapters live in a vLLM server as they live in the registry.

Switchboard renders and measures prompts itself, with the base model's own
tokenizer and chat template (:class:`engine.chat_engine.ChatEngine`), and
sends token ids, so an adapter sees on vLLM exactly the prompt its training
rendered. The weights are the server's: each registry version is loaded into
it through vLLM's runtime LoRA API under its versioned key (``NAME__vN``),
before the first request asks for it, so traffic reaches a new version only
once it is loaded. An old version is unloaded when its last request has
finished. A server that restarted has lost its adapters: :meth:`repair` loads
again every one this process had loaded.

Several replicas may drive one server: loading a key that is already loaded
is a success, so the server holds each version once.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from adapters.manifest import Manifest
from core.settings import Settings
from engine.base_model import base_fingerprint, load_tokenizer, resolve_base_model
from engine.chat_engine import ChatEngine
from engine.vllm.client import VLLMClient

log = logging.getLogger(__name__)


class VLLMEngine(ChatEngine):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = VLLMClient(settings.engine)
        source = resolve_base_model(settings)
        self.tokenizer = load_tokenizer(source)
        self.fingerprint = base_fingerprint(settings)
        self._base: dict | None = None  # the server's base model entry, read on first use
        self._folders: dict[str, str] = {}  # key -> the folder as the server reads it, for every key loaded
        self._in_flight: Counter[str] = Counter()
        self._retiring: set[str] = set()  # unloaded once their last request finishes
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self._unloads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vllm-unload")

    # ---- the server's base model

    def _base_entry(self) -> dict:
        if self._base is None:
            models = self.client.models()
            self._base = next((m for m in models if not m.get("parent")), models[0])
        return self._base

    @property
    def base_name(self) -> str:
        """The name the server serves its base under (``--served-model-name``, else the model path)."""
        return self._base_entry()["id"]

    @property
    def context_window(self) -> int:
        """The server's ``--max-model-len``: what it accepts, whatever the model's config allows."""
        return int(self._base_entry().get("max_model_len") or 2048)

    def ping(self) -> None:
        self.client.ping()

    # ---- adapters

    def server_path(self, manifest: Manifest) -> str:
        """The version's folder as the server sees it (``engine.adapters_path`` when it mounts the folder elsewhere)."""
        folder = Path(manifest.path).resolve()
        mount = self.settings.engine.adapters_path
        if mount is None:
            return str(folder)
        return str(Path(mount) / folder.relative_to(self.settings.adapters_dir.resolve()))

    def ensure(self, manifest: Manifest | None) -> str | None:
        """Load the version into the server unless this process already did; returns its key."""
        if manifest is None:
            return None
        key = manifest.key
        with self._lock:
            self._retiring.discard(key)  # asked for again (a rollback to it): keep it
            if key in self._folders:
                return key
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # concurrent first requests for a new version load it once
            if key not in self._folders:
                path = self.server_path(manifest)
                self.client.load_adapter(key, path)
                with self._lock:
                    self._folders[key] = path
                log.info("loaded adapter %s into the vLLM server from %s", key, path)
        return key

    def activate(self, keys: list[str | None]) -> None:
        """Nothing to do: :meth:`ensure` loaded them already."""

    @property
    def resident_adapters(self) -> list[str]:
        with self._lock:
            return list(self._folders)

    def unload_adapter(self, key: str) -> None:
        """Unload a version from the server once no request of this process uses it."""
        with self._lock:
            if key not in self._folders:
                return
            if self._in_flight[key]:
                self._retiring.add(key)
                return
            del self._folders[key]
        self._unloads.submit(self._unload_now, key)

    def _unload_now(self, key: str) -> None:
        try:
            self.client.unload_adapter(key)
            log.info("unloaded adapter %s from the vLLM server", key)
        except Exception:  # the server is down or restarted: it holds nothing of ours any more
            log.warning("adapter %s could not be unloaded from the vLLM server", key, exc_info=True)

    def hold(self, keys: list[str | None]) -> None:
        """Requests for these versions started: none is unloaded under them."""
        with self._lock:
            self._in_flight.update(k for k in keys if k is not None)

    def release(self, keys: list[str | None]) -> None:
        """Requests finished; the last one of a retiring version unloads it."""
        with self._lock:
            self._in_flight.subtract(k for k in keys if k is not None)
            drained = {k for k in keys if k is not None and self._in_flight[k] <= 0}
            for key in drained:
                del self._in_flight[key]
            retired = drained & self._retiring
            self._retiring -= retired
            for key in retired:
                self._folders.pop(key, None)
        for key in retired:
            self._unloads.submit(self._unload_now, key)

    def repair(self) -> list[str]:
        """Load again every adapter this process had loaded that the server lost (it restarted); returns them."""
        served = {m["id"] for m in self.client.models()}
        self._base = None
        with self._lock:
            lost = {key: path for key, path in self._folders.items() if key not in served}
        for key, path in lost.items():
            self.client.load_adapter(key, path)
        if lost:
            log.warning("the vLLM server had lost %d adapters (it restarted); loaded them again", len(lost))
        return list(lost)

    def close(self) -> None:
        self._unloads.shutdown(wait=True)
