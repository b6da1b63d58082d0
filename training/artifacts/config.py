"""What an export is asked to build: the format, its precision and where it goes."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.errors import InvalidRequestError, validation_message

Format = Literal["merged", "gguf", "ollama", "peft"]
FORMATS: tuple[str, ...] = ("merged", "gguf", "ollama", "peft")

# The precisions each format can write, the first being its default.
DTYPES: dict[str, tuple[str, ...]] = {
    "merged": ("float16", "bfloat16", "float32"),
    "gguf": ("f16", "q8_0", "f32"),
    "ollama": ("f16", "q8_0", "f32"),
    "peft": (),
}

FORMAT_HELP = (
    "merged: a full safetensors model (transformers, vLLM); gguf: a GGUF file for llama.cpp plus the LoRA as a "
    "GGUF adapter; ollama: the GGUF with a Modelfile; peft: the adapter folder and its vLLM multi-LoRA command."
)
DTYPE_HELP = "merged: float16 (default), bfloat16 or float32; gguf/ollama: f16 (default), q8_0 or f32; peft: none."


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Format = Field(description=FORMAT_HELP)
    out: Path = Field(description="Folder to create; it must not exist unless force is set.")
    dtype: str | None = Field(None, description=DTYPE_HELP)
    force: bool = Field(False, description="Replace an existing output folder (only once the new one is complete).")
    keep_free_bytes: int = Field(
        64 << 20, ge=0, description="Disk space that must remain free after writing; the export refuses to start otherwise."
    )

    @model_validator(mode="after")
    def _known_dtype(self) -> ExportConfig:
        allowed = DTYPES[self.format]
        if self.dtype is not None and self.dtype not in allowed:
            choices = ", ".join(allowed) if allowed else "none (the adapter is copied as it is)"
            raise ValueError(f"dtype {self.dtype!r} does not apply to format {self.format}; choose {choices}")
        return self

    @property
    def precision(self) -> str | None:
        """The dtype asked for, or the format's default."""
        return self.dtype or next(iter(DTYPES[self.format]), None)


def export_config(**values) -> ExportConfig:
    """An :class:`ExportConfig`, with a validation failure as the one line a user sees."""
    from pydantic import ValidationError

    try:
        return ExportConfig(**values)
    except ValidationError as exc:
        raise InvalidRequestError(validation_message(exc, "{field}: {problem}", "export: {problem}")) from None
