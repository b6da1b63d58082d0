"""One base model, many LoRA adapters, batched generation.

The base loads once. Adapters are loaded into slots of the base's linear
layers (:mod:`engine.lora`) under keys ``NAME__vN`` (so a new version never reuses
stale weights) and chosen per row: there is no global "active adapter" that one
caller could switch under another. At most ``max_resident_adapters`` stay
loaded; the least recently used are unloaded (their slot is reused) and
reloaded from their folder on demand. Adapters of rows being decoded are held
and never evicted.
Decoding goes through :class:`engine.batch.Batch`, the same running batch the
scheduler (:mod:`engine.scheduler`) feeds continuously.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter, OrderedDict
from pathlib import Path

import torch
from jinja2 import TemplateError

from adapters.manifest import BaseFingerprint, Manifest
from core.errors import InvalidAdapterError, InvalidRequestError
from core.settings import Settings
from engine.base_model import LoadedBase, fingerprint_of, load_base
from engine.batch import Batch
from engine.chat_engine import ChatEngine
from engine.decoding import DecodeRow, Generation, GenerationRequest
from engine.lora import AdapterSlots
from engine.prefix_cache import Layers, PrefixCache
from engine.sampling import GenerationOptions

log = logging.getLogger(__name__)


class Engine(ChatEngine):
    def __init__(self, settings: Settings, base: LoadedBase | None = None) -> None:
        self.settings = settings
        started = time.perf_counter()
        self.base = base or load_base(settings)
        self.tokenizer = self.base.tokenizer
        self.device = self.base.device
        self.fingerprint: BaseFingerprint = fingerprint_of(self.base.model, settings.base_model)
        self.context_window = int(getattr(self.base.model.config, "max_position_embeddings", 2048))
        self._slots = AdapterSlots(self.base.model, storage_dtype=getattr(torch, settings.adapter_dtype))
        self._resident: OrderedDict[str, Path] = OrderedDict()
        self._folders: dict[str, Path] = {}  # every key that may be (re)loaded: resident or evicted
        self._held: Counter[str] = Counter()  # keys in use by rows being decoded
        # Held for every forward pass and residency change; the scheduler takes it once per step.
        self.lock = threading.RLock()
        self.eos_ids = self._eos_ids()
        self.adapter_load_seconds: list[float] = []
        self.prefixes = PrefixCache(settings.prefix_cache_mb * 2**20) if settings.prefix_cache_mb else None
        self._heads = functools.lru_cache(maxsize=256)(self._render_head)
        log.info(
            "Base model %s loaded in %.1fs (%s, %.0f MB)",
            settings.base_model,
            time.perf_counter() - started,
            "4-bit NF4" if self.base.quantized else "full precision",
            self.base.footprint_bytes / 1e6,
        )

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(self.base.model.generation_config, "eos_token_id", None)
        ids.update(configured if isinstance(configured, list) else [configured])
        return {i for i in ids if i is not None}

    @property
    def model(self) -> torch.nn.Module:
        """The base model; its adapted linear layers hold every resident adapter's factors in slots."""
        return self.base.model

    @property
    def resident_adapters(self) -> list[str]:
        with self.lock:
            return list(self._resident)

    @property
    def slot_gathers(self) -> int:
        """How many times the adapter slots a pass uses were gathered anew (see :meth:`AdapterSlots._gather`)."""
        return self._slots.gathers

    def memory_bytes(self) -> int:
        """Bytes of every parameter and buffer now held: the base plus each resident adapter."""
        model = self.model
        return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])

    # Adapters -----------------------------------------------------------------------------------

    def load_adapter(self, key: str, path: Path) -> None:
        """Load a PEFT LoRA folder under ``key``; loading a key that is resident only marks it recently used."""
        # Normal tensors even when a decoding step asks for the reload: slot tensors outlive inference mode.
        with self.lock, torch.inference_mode(False), torch.no_grad():
            self._folders[key] = Path(path)
            if key in self._resident:
                self._resident.move_to_end(key)
                return
            started = time.perf_counter()
            self._evict(keep=set(), limit=self.settings.max_resident_adapters - 1)  # its slot is reused
            try:
                self._slots.load(key, Path(path))
            except InvalidAdapterError as exc:
                raise InvalidAdapterError(f"adapter {key.split('__')[0]}: {exc}") from exc
            except Exception as exc:  # whatever a damaged folder raises fails this adapter's requests, never the engine
                log.exception("adapter %s could not be loaded from %s", key, path)
                raise InvalidAdapterError(
                    f"adapter {key.split('__')[0]} could not be loaded ({type(exc).__name__}); see the server log"
                ) from exc
            self._resident[key] = Path(path)
            self.adapter_load_seconds.append(time.perf_counter() - started)

    def unload_adapter(self, key: str) -> None:
        """Forget an adapter; while rows still decode with it, it is dropped when the last one finishes."""
        with self.lock:
            self._folders.pop(key, None)
            if self.prefixes is not None:
                self.prefixes.drop(key)
            if not self._held[key]:
                self._drop(key)

    def _drop(self, key: str) -> None:
        if key in self._resident:
            del self._resident[key]
            self._slots.unload(key)

    def _evict(self, keep: set[str], limit: int | None = None) -> None:
        limit = self.settings.max_resident_adapters if limit is None else limit
        while len(self._resident) > limit:
            victim = next((k for k in self._resident if k not in keep and not self._held[k]), None)
            if victim is None:
                return
            log.info("Unloading least recently used adapter %s", victim)
            self._drop(victim)

    def activate(self, keys: list[str | None]) -> None:
        """Make these adapters resident and most recently used, reloading evicted ones from their folders."""
        with self.lock:
            for key in dict.fromkeys(k for k in keys if k is not None):
                if key not in self._folders:
                    raise InvalidRequestError(f"adapter {key!r} is not loaded")
                self.load_adapter(key, self._folders[key])
            self._evict(keep=set(keys))

    def hold(self, keys: list[str | None]) -> None:
        """Protect the adapters of rows entering a batch from eviction."""
        with self.lock:
            self._held.update(k for k in keys if k is not None)

    def release(self, keys: list[str | None]) -> None:
        """Rows left the batch: their adapters may be evicted again (or dropped, if unloaded meanwhile)."""
        with self.lock:
            self._held.subtract(k for k in keys if k is not None)
            for key in {k for k in keys if k is not None}:
                if self._held[key] <= 0:
                    del self._held[key]
                    if key not in self._folders:
                        self._drop(key)
            self._evict(keep=set())

    def has_room(self, keys: set[str]) -> bool:
        """Whether these adapters and every held one fit within the residency limit at once."""
        with self.lock:
            return len(set(keys) | set(self._held)) <= self.settings.max_resident_adapters

    def ensure(self, manifest: Manifest | None) -> str | None:
        """The engine key of a registry version, known to the engine from now on; None means the base.

        Its weights load when a request for it joins a batch (:meth:`activate`, on the decoding
        thread). Loading here, in the caller's thread, would wait for a decoding step, stall the
        next while it loads, and could evict the adapter of a request already waiting to join.
        """
        if manifest is None:
            return None
        self._folders.setdefault(manifest.key, Path(manifest.path))
        return manifest.key

    # Generation ---------------------------------------------------------------------------------

    def new_row(self, request: GenerationRequest) -> DecodeRow:
        """A request's decoding row, its answer budget cut to the context window; its adapter may be evicted now
        and reloaded when it runs."""
        if request.adapter is not None and request.adapter not in self._folders:
            raise InvalidRequestError(f"adapter {request.adapter!r} is not loaded")
        prompt_ids = self.prompt_of(request)
        prefix = self._head_length(request.messages, prompt_ids)
        return DecodeRow(request, prompt_ids, self.tokenizer, self.eos_ids, self.device, prefix_length=prefix)

    def _render_head(self, system: str | None) -> tuple[int, ...]:
        """The tokens every prompt with this system message (None: without one) starts with, whatever the
        conversation: the template's system block (its own default one when there is no system message)
        and the header of the first user turn. Found as what two renderings that differ only in the user's
        text share, so it needs to know nothing of the template's markup."""
        system_message = [] if system is None else [{"role": "system", "content": system}]
        first, second = (self.render([*system_message, {"role": "user", "content": text}]) for text in ("A", "B"))
        shared = next((i for i, (a, b) in enumerate(zip(first, second)) if a != b), min(len(first), len(second)))
        return tuple(first[:shared])

    def _head_length(self, messages: list[dict], prompt_ids: list[int]) -> int:
        """How many leading prompt tokens are its cacheable head (:meth:`_render_head`); 0 without a prefix
        cache, or when the prompt does not start with that head."""
        first = messages[0]
        system = first.get("content") if first.get("role") == "system" else None
        if self.prefixes is None or not isinstance(system, str | None):
            return 0
        try:
            ids = self._heads(system)
        except TemplateError:  # a template that refuses a system message
            return 0
        if len(ids) >= len(prompt_ids) or tuple(prompt_ids[: len(ids)]) != ids:
            return 0
        return len(ids)

    def prefix_layers(self, row: DecodeRow) -> Layers | None:
        """The keys and values of a row's system prefix, from the cache or computed now in a pass of their own."""
        if self.prefixes is None or not row.prefix_length:
            return None
        from transformers import DynamicCache

        adapter, ids = row.request.adapter, tuple(row.prompt_ids[: row.prefix_length])
        layers = self.prefixes.get(adapter, ids)
        if layers is None:
            tokens = torch.tensor([ids], device=self.device)
            cache = DynamicCache()
            self.forward(tokens, torch.ones_like(tokens), torch.arange(len(ids), device=self.device)[None], cache, [adapter])
            layers = [(keys, values) for keys, values, _ in cache]
            self.prefixes.put(adapter, ids, layers)
        return layers

    def forward(
        self,
        input_ids,
        attention_mask,
        position_ids,
        cache,
        adapters: list[str | None],
        logits_to_keep: int = 1,
        also: list[str | None] = (),
    ):
        """One pass in which each row uses its own adapter; logits of the last ``logits_to_keep`` positions (0: all).

        ``also``: adapters of rows the next passes carry besides these (see :meth:`AdapterSlots.assign`).
        """
        with self.lock, self._slots.assign(adapters, also):  # the assignment is shared by all layers: one pass at a time
            return self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=logits_to_keep,
            )

    def generate_batch(self, requests: list[GenerationRequest]) -> list[Generation]:
        """Decode all requests in one batch; each row keeps its own adapter, options and stream."""
        rows = [self.new_row(r) for r in requests]
        with self.lock:
            batch = Batch(self)
            try:
                batch.admit(rows)
                while batch:
                    batch.step()
            finally:
                batch.abandon()  # releases held adapters if a step failed; a no-op once all rows finished
        return [r.result() for r in rows]

    def generate(
        self,
        messages: list[dict],
        adapter: str | None = None,
        options: GenerationOptions | None = None,
        on_text=None,
    ) -> Generation:
        request = GenerationRequest(messages, adapter, options or self.default_options(), on_text)
        return self.generate_batch([request])[0]
