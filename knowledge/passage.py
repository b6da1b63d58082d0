"""The unit retrieval returns: a chunk of a document with its citation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Passage:
    id: str = field(metadata={"help": "Stable chunk id: collection, source, chunk index and content hash."})
    source: str = field(metadata={"help": "Document the chunk came from (file name as ingested)."})
    text: str = field(metadata={"help": "The chunk text shown to the model and the user."})
    score: float = field(default=0.0, metadata={"help": "Relevance in [0, 1]; higher is more relevant."})
    title: str = field(default="", metadata={"help": "Document title, when known."})
    section: str = field(default="", metadata={"help": "Page number, heading or article the chunk belongs to."})
    collection: str = field(default="", metadata={"help": "Knowledge collection holding the chunk."})
    page: int | None = field(default=None, metadata={"help": "1-based page of paged sources (PDF), else None."})
    dense_score: float | None = field(
        default=None, metadata={"help": "Cosine similarity of query and chunk embeddings, when computed."}
    )
    lexical_score: float | None = field(
        default=None, metadata={"help": "Share of the query's IDF-weighted words found in the chunk, when computed."}
    )

    def to_dict(self) -> dict:
        return asdict(self)
