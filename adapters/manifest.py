"""What the registry records about each adapter version.

A manifest sits beside the PEFT files of every version
(``$SWITCHBOARD_HOME/adapters/NAME/vN/manifest.json``). Compatibility with the
base is decided by the fingerprint (shapes), never by the adapter's
``base_model_name_or_path``, which is only the path it was trained from.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.errors import InvalidAdapterError

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
RESERVED_NAMES = frozenset({"auto", "base"})
MANIFEST_FILE = "manifest.json"


def check_name(name: str) -> str:
    """Adapter names become folder names: only ``[a-z0-9][a-z0-9_-]*`` can never escape the registry."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InvalidAdapterError(
            f"invalid adapter name {name!r}: use 1-64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
        )
    if name in RESERVED_NAMES:
        raise InvalidAdapterError(f"adapter name {name!r} is reserved ('auto' routes, 'base' answers with no adapter)")
    return name


@dataclass(frozen=True)
class BaseFingerprint:
    """The shapes an adapter must fit, taken from the base model itself."""

    architecture: str = field(metadata={"help": "Model class, e.g. LlamaForCausalLM."})
    hidden_size: int = field(metadata={"help": "Width of the residual stream."})
    num_layers: int = field(metadata={"help": "Number of transformer blocks."})
    vocab_size: int = field(metadata={"help": "Rows of the token embedding."})
    modules: dict[str, list[int]] = field(
        default_factory=dict,
        metadata={"help": "Weight shape of every linear/embedding module, layer index replaced by '*'."},
    )
    base_model: str = field(default="", metadata={"help": "Id or folder the base was loaded from (informational)."})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaseFingerprint:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def summary(self) -> dict[str, Any]:
        """The fingerprint without the module table, as shown to users and stored in manifests."""
        data = self.to_dict()
        data.pop("modules")
        return data


@dataclass
class Manifest:
    name: str = field(metadata={"help": "Registry name, [a-z0-9][a-z0-9_-]*."})
    version: int = field(metadata={"help": "Increases with every install under this name."})
    description: str = field(default="", metadata={"help": "What the adapter is for, shown in lists and the UI."})
    status: str = field(default="enabled", metadata={"help": "enabled or disabled (disabled adapters are not served)."})
    base_model: str = field(default="", metadata={"help": "Base the adapter was validated against."})
    fingerprint: dict[str, Any] = field(default_factory=dict, metadata={"help": "Base architecture and sizes."})
    rank: int = field(default=0, metadata={"help": "LoRA rank r."})
    alpha: float = field(default=0.0, metadata={"help": "LoRA alpha."})
    target_modules: list[str] = field(default_factory=list, metadata={"help": "Modules the LoRA adapts."})
    size_bytes: int = field(default=0, metadata={"help": "Size of adapter_model.safetensors."})
    examples: list[str] = field(default_factory=list, metadata={"help": "Routing utterances for the router."})
    keywords: list[str] = field(default_factory=list, metadata={"help": "Words that route to this adapter."})
    collections: list[str] = field(default_factory=list, metadata={"help": "Knowledge collections it retrieves from."})
    system_prompt: str = field(default="", metadata={"help": "System prompt of its answers."})
    no_answer: str = field(default="", metadata={"help": "Reply when retrieval finds nothing relevant."})
    generation: dict[str, Any] = field(default_factory=dict, metadata={"help": "Generation defaults for its answers."})
    metrics: dict[str, Any] = field(default_factory=dict, metadata={"help": "Evaluation figures recorded at install."})
    provenance: dict[str, Any] = field(default_factory=dict, metadata={"help": "Where it came from (upload, run id)."})
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
    path: str = field(default="", metadata={"help": "Folder holding this version's files (not stored)."})

    @property
    def enabled(self) -> bool:
        return self.status == "enabled"

    @property
    def key(self) -> str:
        """Name under which the engine loads this version: a new version never reuses stale weights.

        The install time is part of it, so removing an adapter and installing another under the
        same name (which starts again at v1) cannot hit weights a running server still holds.
        """
        return f"{self.name}__v{self.version}_{re.sub(r'[^0-9]', '', self.created_at)}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """The row ``switchboard adapters list`` promises."""
        return {
            "name": self.name,
            "version": self.version,
            "status": self.status,
            "description": self.description,
            "base_model": self.base_model,
            "rank": self.rank,
            "size_bytes": self.size_bytes,
        }

    def write(self, folder: Path) -> None:
        data = self.to_dict()
        data.pop("path")
        data.pop("status")  # status belongs to the name, not to one version
        (folder / MANIFEST_FILE).write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def read(cls, folder: Path, status: str = "enabled") -> Manifest:
        try:
            data = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
            known = {f.name for f in fields(cls)}
            manifest = cls(**{k: v for k, v in data.items() if k in known})
        except (OSError, ValueError, TypeError, RecursionError, AttributeError) as exc:
            raise InvalidAdapterError(f"{folder.name}/{MANIFEST_FILE}: unreadable ({type(exc).__name__})") from None
        manifest.status = status
        manifest.path = str(folder)
        return manifest
