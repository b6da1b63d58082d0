"""What the product asks of an engine, whichever generates the tokens.

The pipeline measures and renders prompts with the engine's tokenizer and
hands the rendered token ids to the scheduler, so the prompt an adapter sees
is the same text on every engine: the one its training rendered, with the
model's own chat template. The embedded engine (:mod:`engine.embedded`) and
the vLLM client (:mod:`engine.vllm.engine`) both start from here.
"""

from __future__ import annotations

from adapters.manifest import BaseFingerprint, Manifest
from core.errors import InvalidRequestError
from core.settings import Settings
from engine.decoding import GenerationRequest
from engine.sampling import GenerationOptions


class ChatEngine:
    """Renders chats and knows the adapters; subclasses say where the weights live."""

    settings: Settings
    tokenizer: object
    fingerprint: BaseFingerprint
    context_window: int

    def ping(self) -> None:
        """Raise :class:`core.errors.UnavailableError` when the weights cannot be reached; in this process they
        always can (a stopped generation worker is the scheduler's to report)."""

    def render(self, messages: list[dict]) -> list[int]:
        """The prompt's token ids: the chat template's text, tokenized without adding special tokens again."""
        if not messages:
            raise InvalidRequestError("no messages to answer")
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_of(self, request: GenerationRequest) -> list[int]:
        """A request's prompt ids, its answer budget cut to what the context window leaves."""
        prompt_ids = request.prompt_ids if request.prompt_ids is not None else self.render(request.messages)
        window = self.context_window
        budget = window - len(prompt_ids)
        if budget < 1:
            raise InvalidRequestError(f"the prompt is {len(prompt_ids)} tokens; the model's context window is {window}")
        if request.options.max_new_tokens > budget:
            request.options = request.options.model_copy(update={"max_new_tokens": budget})
        return prompt_ids

    def default_options(self, **overrides) -> GenerationOptions:
        return GenerationOptions.from_defaults(self.settings.generation, **overrides)

    def ensure(self, manifest: Manifest | None) -> str | None:
        """The engine key of a registry version, ready to be asked for; None means the base."""
        raise NotImplementedError

    @property
    def resident_adapters(self) -> list[str]:
        raise NotImplementedError

    def unload_adapter(self, key: str) -> None:
        raise NotImplementedError

    def activate(self, keys: list[str | None]) -> None:
        """Load these adapters now rather than on their first request (a server warming up)."""
        raise NotImplementedError
