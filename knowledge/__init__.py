"""Knowledge: documents → chunks → embeddings in Chroma; hybrid retrieval with citations.

The public names load on first use (PEP 562), so importing the settings,
which import :mod:`core.sections`, does not import Chroma or BM25.
"""

from __future__ import annotations

_PUBLIC = {
    "KnowledgeBase": "knowledge.knowledge_base",
    "IngestReport": "knowledge.ingest",
    "Passage": "knowledge.passage",
    "SentenceEncoder": "knowledge.embeddings",
}

__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'knowledge' has no attribute {name!r}")
