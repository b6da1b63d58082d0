"""One request's decoding state: its tokens, its text so far, when it stops.

The engine and the scheduler step many rows together; each row decides alone
whether it is done (end-of-turn token, a stop string, its token budget) and
which new text it may release to its stream.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from core.errors import GenerationError
from engine.sampling import GenerationOptions, RowSampler


@dataclass
class GenerationRequest:
    messages: list[dict] = field(metadata={"help": "Chat messages, oldest first."})
    adapter: str | None = field(default=None, metadata={"help": "Engine key of a loaded adapter; None for the base."})
    options: GenerationOptions = field(default_factory=GenerationOptions)
    on_text: Callable[[str], None] | None = field(default=None, metadata={"help": "Receives each new piece of text."})
    cancel: threading.Event | None = field(
        default=None, metadata={"help": "Set by the caller (a client that went away) to stop the row before the next step."}
    )
    prompt_ids: list[int] | None = field(
        default=None,
        metadata={"help": "The messages already rendered with the chat template (the pipeline measured them); None renders."},
    )


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn or a stop string), "length", "cancelled" or "error"
    token_ids: tuple[int, ...] = ()


class DecodeRow:
    """Tracks one request through decoding, releasing only text that can no longer change."""

    def __init__(
        self,
        request: GenerationRequest,
        prompt_ids: list[int],
        tokenizer,
        eos_ids: set[int],
        device: torch.device,
        prefix_length: int = 0,
    ) -> None:
        self.request = request
        self.prompt_ids = prompt_ids
        self.prefix_length = prefix_length  # leading prompt tokens whose keys and values may come from a cache
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.sampler = RowSampler(request.options, device)
        self.generated: list[int] = []
        self.text = ""
        self.released = 0
        self.finish_reason: str | None = None
        self.error: GenerationError | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def push(self, token: int) -> None:
        """Append a chosen token, update the text, and stream what is settled."""
        if self.done:
            return
        options = self.request.options
        if token in self.eos_ids and not options.ignore_eos:
            self.finish_reason = "stop"
        else:
            self.generated.append(token)
            self.text = self.tokenizer.decode(self.generated, skip_special_tokens=True)
            cut = min((i for i in (self.text.find(s) for s in options.stop if s) if i >= 0), default=-1)
            if cut >= 0:
                self.text = self.text[:cut]
                self.finish_reason = "stop"
            elif len(self.generated) >= options.max_new_tokens:
                self.finish_reason = "length"
        self._release()

    def cancel(self) -> None:
        if not self.done:
            self.finish_reason = "cancelled"

    def fail(self, exc: BaseException) -> None:
        """End this row alone with an error (its request fails; the batch goes on without it)."""
        if not self.done:
            self.finish_reason = "error"
            self.error = exc if isinstance(exc, GenerationError) else GenerationError(
                f"the generation failed ({type(exc).__name__}); other requests are unaffected"
            )

    def _settled_length(self) -> int:
        if self.done:
            return len(self.text)
        end = len(self.text)
        if self.text.endswith("\ufffd"):  # half of a multi-byte character
            end -= 1
        for stop in self.request.options.stop:
            for size in range(min(len(stop) - 1, end), 0, -1):
                if self.text[:end].endswith(stop[:size]):
                    end -= size
                    break
        return max(end, self.released)

    def _release(self) -> None:
        end = self._settled_length()
        if end > self.released and self.request.on_text is not None:
            self.request.on_text(self.text[self.released : end])
        self.released = max(self.released, end)

    def result(self) -> Generation:
        """The finished generation; raises the row's error if it failed."""
        if self.error is not None:
            raise self.error
        return Generation(
            text=self.text.strip(),
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=len(self.generated),
            finish_reason=self.finish_reason or "length",
            token_ids=tuple(self.generated),
        )
