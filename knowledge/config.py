"""Settings of the knowledge base (the ``[knowledge]`` section of switchboard.toml)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from knowledge.loaders import MAX_UNPACKED_BYTES


class KnowledgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    chroma_url: str | None = Field(None, description="URL of a Chroma server (`chroma run`); unset uses the embedded store.")
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
