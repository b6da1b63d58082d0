"""The sections of the settings, one model each (``[knowledge]``, ``[training]`` ... in switchboard.toml).

They live in the shared base so every package can take the section it needs
without importing the package that owns the whole settings: the knowledge base
takes :class:`KnowledgeConfig`, a training run :class:`TrainingDefaults`, the
scheduler :class:`SchedulerConfig`. Every model forbids unknown keys, so a
misspelt option fails loudly.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_UNPACKED_BYTES = 25_000_000  # a .docx or PDF stream unpacking to more is skipped (zip bombs)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GenerationDefaults(Section):
    max_new_tokens: int = Field(256, ge=1, le=8192, description="Tokens generated at most per answer.")
    temperature: float = Field(0.0, ge=0.0, le=5.0, description="0 decodes greedily; above 0 samples.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass when sampling.")
    repetition_penalty: float = Field(
        1.2, ge=1.0, le=3.0, description="Penalty on tokens already in the context; small models loop without it."
    )


class RouterConfig(Section):
    threshold: float = Field(
        0.25, ge=0.0, le=1.0, description="Below this score the base model answers instead of an adapter."
    )
    top_k_examples: int = Field(3, ge=1, le=50, description="Nearest routing examples averaged per adapter.")
    max_chars: int = Field(
        2000, ge=16, description="Only this many characters of a message or example are read: huge input costs no more."
    )
    keyword_boost: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Added to an adapter's score when the message contains one of its keywords (every word of it).",
    )
    follow_up_max_tokens: int = Field(
        3,
        ge=0,
        le=64,
        description="A message of at most this many content words (stopwords not counted) is a follow-up.",
    )
    follow_up_bonus: float = Field(
        0.15,
        ge=0.0,
        le=1.0,
        description="Added to the previous turn's adapter for a follow-up, so it keeps the conversation "
        "unless another adapter still scores higher.",
    )
    retrieval_threshold: float = Field(
        0.4,
        ge=0.0,
        le=1.0,
        description="A message whose best passage in an adapter's collections is at least this relevant goes to "
        "that adapter even when its routing examples do not cover it; 1 turns retrieval-aware routing off. On the "
        "demo's labelled messages no off-topic one retrieves anything (relevance under knowledge.min_score), while "
        "in-domain ones below the routing threshold retrieve at 0.40-0.60.",
    )
    retrieval_weight: float = Field(
        0.5,
        ge=0.0,
        le=2.0,
        description="How much an adapter's retrieval relevance adds to its routing score when adapters compete: "
        "the one whose documents answer the message wins over one whose examples merely resemble it.",
    )


class ServerConfig(Section):
    host: str = Field("127.0.0.1", description="Interface to bind; without an admin token only loopback is allowed.")
    port: int = Field(7860, ge=1, le=65535, description="One port for the UI (/) and the API (/v1).")
    max_body_bytes: int = Field(2_000_000, ge=1024, description="Largest JSON request body accepted.")
    max_upload_bytes: int = Field(200_000_000, ge=1024, description="Largest upload (adapter or documents).")
    ui_concurrency: int = Field(8, ge=1, le=256, description="Chats the UI runs at once.")
    follow_s: float = Field(
        2.0,
        gt=0,
        description="How often the server looks for adapter changes another replica made in a shared registry "
        "folder; a request always gets the version served at that moment.",
    )


class SchedulerConfig(Section):
    max_batch_size: int = Field(8, ge=1, le=256, description="Rows decoded together in one forward pass.")
    max_queue: int = Field(64, ge=1, description="Waiting requests before new ones get 503 Retry-After.")
    batching: bool = Field(True, description="Off runs one request at a time (the benchmark baseline).")
    threads: int | None = Field(None, ge=1, le=1024, description="torch threads of the decoding thread; unset: every core.")



class EngineConfig(Section):
    """Where tokens come from: the engine inside this process, or a vLLM server that several replicas share."""

    backend: Literal["embedded", "vllm"] = Field(
        "embedded",
        description="embedded: the base model and adapters in this process (4-bit NF4 by default); vllm: a vLLM "
        "server at engine.url generates, and Switchboard loads its adapters into it at runtime.",
    )
    url: str | None = Field(None, description="Base URL of the vLLM server (http://host:port); needed by backend vllm.")
    api_key: str | None = Field(None, description="Bearer token the vLLM server was started with (--api-key), if any.")
    adapters_path: str | None = Field(
        None,
        description="The adapters folder as the vLLM server sees it, when it mounts it elsewhere; unset: the same path.",
    )
    timeout_s: float = Field(
        600.0, gt=0, description="Longest wait for one answer from the vLLM server before the turn fails."
    )

    @model_validator(mode="after")
    def _url_for_vllm(self) -> "EngineConfig":
        if self.backend == "vllm" and not self.url:
            raise ValueError("backend 'vllm' needs engine.url (SWITCHBOARD_ENGINE__URL=http://host:port)")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"engine.url must start with http:// or https://, not {self.url!r}")
        return self


class KnowledgeConfig(Section):
    """The knowledge base: chunking, limits on documents, retrieval."""


    chroma_url: str | None = Field(None, description="URL of a Chroma server (`chroma run`); unset uses the embedded store.")
    refresh_s: float = Field(
        2.0,
        ge=0,
        description="On a Chroma server that other replicas write to: how long a collection's state is trusted "
        "before it is asked again, so another replica's ingest is found within this time; 0 asks on every query.",
    )
    chunk_tokens: int = Field(256, ge=16, le=8192, description="Chunk size in tokens of the embedding model.")
    chunk_overlap: int = Field(32, ge=0, le=4096, description="Tokens shared by neighbouring chunks.")
    max_file_bytes: int = Field(20_000_000, ge=1, description="Files larger than this are skipped.")
    max_unpacked_bytes: int = Field(
        MAX_UNPACKED_BYTES, ge=1, description="Containers (.docx, PDF streams) that unpack to more than this are skipped."
    )
    k: int = Field(4, ge=1, le=100, description="Passages retrieved per query.")
    min_score: float = Field(0.3, ge=0.0, le=1.0, description="Below this relevance retrieval returns nothing relevant.")
    default_collections: list[str] = Field(default_factory=list, description="Collections the base model retrieves from.")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> "KnowledgeConfig":
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_tokens ({self.chunk_tokens})"
            )
        return self


class GroundingConfig(Section):
    """The checks an answer passes against its sources before it is shown."""


    check_citations: bool = Field(
        True,
        description="Remove [n] markers that name no given source; re-point a citation whose source does not hold "
        "the article its sentence names; cite the best-supporting source when an answer cites none.",
    )
    check_facts: bool = Field(
        True,
        description="Numbers, amounts, durations, dates, phone numbers, e-mail addresses, URLs and article numbers "
        "must appear in a cited source (or the question); an answer that fails is replaced by a quote of the "
        "best-matching passage, or the adapter's no-answer text.",
    )
    keep_script: bool = Field(
        True, description="Answer a question in Traditional Chinese in Traditional characters, Simplified in Simplified."
    )
    min_support: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="An answer that cites nothing is given the citation of the source holding at least this share "
        "of its words; below it the answer counts as unsupported.",
    )
    min_quote_overlap: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="A fallback quote must hold at least this share of the question's words; below it the "
        "adapter's no-answer text is shown instead.",
    )


class TrainingDefaults(Section):
    """The operator's training defaults; one run's full description is a :class:`training.recipe.Recipe`."""


    max_steps: int = Field(60, ge=1, description="Optimizer steps of a training run unless a run says otherwise.")
    rank: int = Field(4, ge=1, le=1024, description="LoRA rank of new adapters (see training.recipe.Recipe.rank).")
    alpha: int = Field(16, ge=1, description="LoRA alpha of new adapters (see training.recipe.Recipe.alpha).")
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate.")
    batch_size: int = Field(4, ge=1, description="Examples per step.")
    max_length: int = Field(512, ge=16, description="Tokens per training example at most.")
    seed: int = Field(42, description="Seed of splits, replay sampling and training.")
    holdout_fraction: float = Field(
        0.15, ge=0.0, lt=0.9, description="Share of the examples kept out of training to measure held-out loss."
    )
    replay_fraction: float = Field(
        0.08,
        ge=0.0,
        lt=0.9,
        description="Share of general instruction examples mixed into training against catastrophic forgetting.",
    )
    min_answer_chars: int = Field(2, ge=0, description="Turns whose answer is shorter than this are dropped.")
    regression_margin: float = Field(
        0.10, ge=0.0, le=10.0, description="Allowed relative rise of general-prompt perplexity over the base."
    )
