"""One base model, many LoRA adapters, batched generation.

The base loads once. Adapters are loaded into one PEFT wrapper under keys
``NAME__vN`` (so a new version never reuses stale weights) and chosen per row
with PEFT's ``adapter_names``: there is no global "active adapter" that one
caller could switch under another. At most ``max_resident_adapters`` stay
loaded; the least recently used are unloaded and reloaded from the registry
on demand.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import torch

from adapters.manifest import BaseFingerprint, Manifest
from bot.base_model import LoadedBase, fingerprint_of, load_base
from bot.decoding import DecodeRow, Generation, GenerationRequest
from bot.errors import InvalidAdapterError, InvalidRequestError
from bot.sampling import GenerationOptions
from bot.settings import Settings

log = logging.getLogger(__name__)

BASE_ROW = "__base__"


class Engine:
    def __init__(self, settings: Settings, base: LoadedBase | None = None) -> None:
        self.settings = settings
        started = time.perf_counter()
        self.base = base or load_base(settings)
        self.tokenizer = self.base.tokenizer
        self.device = self.base.device
        self.fingerprint: BaseFingerprint = fingerprint_of(self.base.model, settings.base_model)
        self.context_window = int(getattr(self.base.model.config, "max_position_embeddings", 2048))
        self._peft = None
        self._resident: OrderedDict[str, Path] = OrderedDict()
        self._lock = threading.RLock()
        self.eos_ids = self._eos_ids()
        self.adapter_load_seconds: list[float] = []
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
        """The PEFT wrapper while any adapter is resident; else the base, whose emptied LoRA layers pass through."""
        return self._peft if self._peft is not None and self._resident else self.base.model

    @property
    def resident_adapters(self) -> list[str]:
        with self._lock:
            return list(self._resident)

    def memory_bytes(self) -> int:
        """Bytes of every parameter and buffer now held: the base plus each resident adapter."""
        model = self.model
        return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])

    # Adapters -----------------------------------------------------------------------------------

    def load_adapter(self, key: str, path: Path) -> None:
        """Load a PEFT folder under ``key``; loading a key that is resident only marks it recently used."""
        from peft import PeftModel

        with self._lock:
            if key in self._resident:
                self._resident.move_to_end(key)
                return
            started = time.perf_counter()
            try:
                if self._peft is None:
                    self._peft = PeftModel.from_pretrained(self.base.model, str(path), adapter_name=key, is_trainable=False)
                    self._peft.eval()
                else:
                    self._peft.load_adapter(str(path), adapter_name=key, is_trainable=False)
                    if self._peft.active_adapter not in self._peft.peft_config:
                        self._peft.set_adapter(key, inference_mode=True)  # the old active one was unloaded
            except (OSError, ValueError, RuntimeError, KeyError) as exc:
                raise InvalidAdapterError(f"adapter {key} at {path} could not be loaded: {exc}") from exc
            self._resident[key] = Path(path)
            self.adapter_load_seconds.append(time.perf_counter() - started)
            self._evict(keep={key})

    def unload_adapter(self, key: str) -> None:
        with self._lock:
            if key not in self._resident:
                return
            del self._resident[key]
            self._peft.delete_adapter(key)

    def _evict(self, keep: set[str]) -> None:
        while len(self._resident) > self.settings.max_resident_adapters:
            victim = next((k for k in self._resident if k not in keep), None)
            if victim is None:
                return
            log.info("Unloading least recently used adapter %s", victim)
            self.unload_adapter(victim)

    def ensure(self, manifest: Manifest | None) -> str | None:
        """The engine key of a registry version, loading it on first use; None means the base."""
        if manifest is None:
            return None
        self.load_adapter(manifest.key, Path(manifest.path))
        return manifest.key

    # Generation ---------------------------------------------------------------------------------

    def render(self, messages: list[dict]) -> list[int]:
        if not messages:
            raise InvalidRequestError("no messages to answer")
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, messages: list[dict]) -> int:
        return len(self.render(messages))

    def _row(self, request: GenerationRequest) -> DecodeRow:
        if request.adapter is not None and request.adapter not in self._resident:
            raise InvalidRequestError(f"adapter {request.adapter!r} is not loaded")
        prompt_ids = self.render(request.messages)
        budget = self.context_window - len(prompt_ids)
        if budget < 1:
            raise InvalidRequestError(
                f"the prompt is {len(prompt_ids)} tokens; the model's context window is {self.context_window}"
            )
        if request.options.max_new_tokens > budget:
            request.options = request.options.model_copy(update={"max_new_tokens": budget})
        return DecodeRow(request, prompt_ids, self.tokenizer, self.eos_ids, self.device)

    def forward(self, input_ids, attention_mask, position_ids, cache, adapters: list[str | None]):
        """One forward pass in which each row uses its own adapter."""
        kwargs = {}
        if self.model is self._peft:
            kwargs["adapter_names"] = [a or BASE_ROW for a in adapters]
        return self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            **kwargs,
        )

    @torch.inference_mode()
    def _decode(self, rows: list[DecodeRow]) -> None:
        from transformers import DynamicCache

        pad = self.tokenizer.pad_token_id
        width = max(len(r.prompt_ids) for r in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids)
            attention_mask[i, width - len(row.prompt_ids) :] = 1
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        adapters = [r.request.adapter for r in rows]
        cache = DynamicCache()
        out = self.forward(input_ids, attention_mask, position_ids, cache, adapters)
        while True:
            logits = out.logits[:, -1, :]
            tokens = []
            for i, row in enumerate(rows):
                token = row.choose(logits[i]) if not row.done else pad
                row.push(token)
                tokens.append(token)
            if all(r.done for r in rows):
                return
            next_ids = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(rows), 1))], dim=1)
            position_ids = position_ids[:, -1:] + 1
            out = self.forward(next_ids, attention_mask, position_ids, cache, adapters)

    def generate_batch(self, requests: list[GenerationRequest]) -> list[Generation]:
        """Decode all requests in one batch; each row keeps its own adapter, options and stream."""
        with self._lock:
            rows = [self._row(r) for r in requests]
            for key in {r.adapter for r in requests if r.adapter}:
                self._resident.move_to_end(key)
            self._decode(rows)
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

    def stream(
        self, messages: list[dict], adapter: str | None = None, options: GenerationOptions | None = None
    ) -> Iterator[str]:
        """Yield text pieces as they are generated; the decoding runs in a worker thread."""
        pieces: queue.Queue = queue.Queue()
        done = object()
        failure: list[BaseException] = []

        def work() -> None:
            try:
                self.generate(messages, adapter, options, on_text=pieces.put)
            except BaseException as exc:  # re-raised in the caller's thread
                failure.append(exc)
            finally:
                pieces.put(done)

        threading.Thread(target=work, daemon=True).start()
        while (piece := pieces.get()) is not done:
            yield piece
        if failure:
            raise failure[0]

    def default_options(self, **overrides) -> GenerationOptions:
        return GenerationOptions.from_defaults(self.settings.generation, **overrides)
