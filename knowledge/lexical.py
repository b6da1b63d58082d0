"""The lexical half of hybrid retrieval: BM25 (bm25s) over one collection's chunks.

Dense embeddings miss exact identifiers (product codes, article numbers) and,
with an English embedding model, most Chinese text; BM25 over words and
Chinese segments catches both. bm25s has no incremental update, so an index
is immutable: a change builds a new index from the token ids kept per chunk
(no re-tokenizing), and readers keep using the old one until it is swapped
in. Besides BM25 the index knows which documents it holds, so listing and
the "unchanged file" check need no scan of Chroma.

Persistence sits beside Chroma, one folder per collection, replaced whole on
save. ``state`` is the token the knowledge base also writes into the Chroma
collection's metadata before every change; a saved index whose state differs
from Chroma's is stale (a crash between the two writes) and is rebuilt from
Chroma's documents.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import shutil
import threading
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]+")
_WORD = re.compile(r"[^\W_]+")
# Function words and question words of Chinese (Simplified, as tokens are): they match everything or nothing.
_ZH_STOPWORDS = frozenset(
    "的 了 是 在 和 与 及 或 吗 呢 吧 啊 我 你 您 他 她 它 我们 这 那 有 就 都 也 要 会 可以 能 一个 请问 "
    "什么 怎么 怎样 怎么样 如何 哪 哪些 哪里 哪儿 哪个 为什么 是否 多少 多久 几 几个 几天 几年 时 时候 什么时候".split()
)
_META = "meta.json"
_TOKENS = "tokens.npz"


@functools.cache
def _stopwords_en() -> frozenset[str]:
    """bm25s's list (Lucene's 33 words) plus the words every question is made of."""
    from bm25s.stopwords import STOPWORDS_EN

    questions = "what which who whom whose when where why how do does did can could would should may might i me my"
    return frozenset(STOPWORDS_EN) | frozenset(questions.split())


def _stem(word: str) -> str:
    """Harman's S-stemmer: plural to singular, the one English inflection that most often hides a match."""
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if word.endswith("s") and not word.endswith(("us", "ss")):
        return word[:-1]
    return word


@functools.cache
def _to_simplified():
    import opencc

    return opencc.OpenCC("t2s")


def _segment_cjk(run: str) -> list[str]:
    import jieba

    jieba.setLogLevel(logging.WARNING)
    # One script for both sides: a Traditional document (退貨) meets a Simplified query (退货), and
    # jieba's dictionary, which is Simplified, segments both.
    run = _to_simplified().convert(run)
    # Without the HMM, words missing from jieba's (mostly simplified) dictionary fall apart into characters
    # instead of being glued into one rare token no query would repeat: 「退貨後七個」 → 退 貨 後 七 個.
    return [w for w in jieba.cut_for_search(run, HMM=False) if _WORD.search(w) and w not in _ZH_STOPWORDS]


def tokenize(text: str) -> list[str]:
    """Lower-cased, S-stemmed words without English stopwords; Chinese runs in Simplified script, segmented by jieba.

    Japanese and Korean runs go through the same segmenter, which falls back
    to single characters for them: weaker than a proper analyzer, never empty.
    """
    tokens: list[str] = []
    position = 0
    for match in _CJK.finditer(text):
        tokens.extend(_latin_tokens(text[position : match.start()]))
        tokens.extend(_segment_cjk(match.group()))
        position = match.end()
    tokens.extend(_latin_tokens(text[position:]))
    return tokens


def _latin_tokens(text: str) -> list[str]:
    stopwords = _stopwords_en()
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in stopwords]


@dataclass(frozen=True)
class DocumentRecord:
    source: str = field(metadata={"help": "File name the document was ingested under."})
    title: str = field(metadata={"help": "Document title."})
    doc_hash: str = field(metadata={"help": "Hash of the file bytes and the chunking settings; equal means unchanged."})
    ingested_at: str = field(metadata={"help": "UTC time of the ingest, ISO 8601."})
    chunk_ids: tuple[str, ...] = field(metadata={"help": "Ids of the document's chunks, in order."})
    origin: str = field(
        default="",
        metadata={"help": "Where the file came from: its absolute path, 'upload', or '' when ingested before "
                  "origins were kept. Two files of one name from different origins are different documents."},
    )


@dataclass(frozen=True)
class LexicalHit:
    id: str
    bm25: float = field(metadata={"help": "Raw BM25 score; comparable only within one collection."})
    coverage: float = field(metadata={"help": "Share of the query's IDF weight found in the chunk, in [0, 1]."})


class LexicalIndex:
    """An immutable BM25 index of one collection plus the records of the documents in it."""

    def __init__(
        self,
        ids: list[str],
        sources: list[str],
        tokens: list[np.ndarray],
        vocab: dict[str, int],
        documents: dict[str, DocumentRecord],
        state: str | None,
    ) -> None:
        self.ids = ids
        self.sources = sources
        self.documents = documents
        self.state = state
        self._tokens = tokens
        self._vocab = vocab
        self._bm25 = None
        self._idf = np.zeros(0)
        self._build_lock = threading.Lock()
        source_names = sorted(set(sources))
        self._source_code = {name: code for code, name in enumerate(source_names)}
        self._source_codes = np.array([self._source_code[s] for s in sources], dtype=np.int32)

    def warm(self) -> "LexicalIndex":
        """Build the BM25 matrix now rather than on the first search (seconds at 100k chunks)."""
        with self._build_lock:
            if self._bm25 is None and self.ids and self._vocab:
                import bm25s

                bm25 = bm25s.BM25(method="lucene")
                bm25.index((self._tokens, self._vocab), create_empty_token=False, show_progress=False)
                self._idf = _idf(np.diff(bm25.scores["indptr"]), len(self.ids))
                self._bm25 = bm25
        return self

    @classmethod
    def empty(cls, state: str | None = None) -> "LexicalIndex":
        return cls([], [], [], {}, {}, state)

    def __len__(self) -> int:
        return len(self.ids)

    def with_changes(
        self,
        removed: set[str],
        added: list[tuple[DocumentRecord, list[str]]],
        state: str | None,
    ) -> "LexicalIndex":
        """A new index without the ``removed`` sources and with the ``added`` documents (record, chunk texts).

        A source both removed and added is replaced; token ids of untouched
        chunks are reused, so only the new text is tokenized.
        """
        replaced = removed | {record.source for record, _ in added}
        keep = [i for i, source in enumerate(self.sources) if source not in replaced]
        ids = [self.ids[i] for i in keep]
        sources = [self.sources[i] for i in keep]
        tokens = [self._tokens[i] for i in keep]
        vocab = dict(self._vocab)
        documents = {s: r for s, r in self.documents.items() if s not in replaced}
        for record, texts in added:
            ids.extend(record.chunk_ids)
            sources.extend([record.source] * len(texts))
            tokens.extend(_token_ids(tokenize(text), vocab) for text in texts)
            documents[record.source] = record
        return LexicalIndex(ids, sources, tokens, vocab, documents, state)

    def search(self, query: str, n: int, sources: list[str] | None = None) -> list[LexicalHit]:
        """The ``n`` best chunks by BM25 that share at least one token with the query."""
        if self.warm()._bm25 is None:
            return []
        terms = list(dict.fromkeys(tokenize(query)))
        known = [self._vocab[t] for t in terms if t in self._vocab]
        if not known:
            return []
        scores = self._bm25.get_scores_from_ids(known)
        if sources is not None:
            codes = [self._source_code[s] for s in sources if s in self._source_code]
            scores = np.where(np.isin(self._source_codes, codes), scores, 0.0)
        candidates = np.flatnonzero(scores > 0)
        if candidates.size > n:
            candidates = candidates[np.argpartition(-scores[candidates], n - 1)[:n]]
        candidates = candidates[np.argsort(-scores[candidates], kind="stable")]
        coverage = self._coverage(terms, candidates)
        return [LexicalHit(self.ids[i], float(scores[i]), float(c)) for i, c in zip(candidates, coverage)]

    def _coverage(self, terms: list[str], rows: np.ndarray) -> np.ndarray:
        """IDF-weighted share of the query's terms present in each row; terms the index never saw weigh the most.

        Unlike BM25 this is bounded and comparable across collections and
        queries, which is what a relevance threshold needs: a chunk holding
        every informative word of the query scores 1, one holding only a
        common word scores little, one holding none scores 0.
        """
        unknown = float(_idf(np.zeros(1), len(self.ids))[0])
        weights = {self._vocab[t]: float(self._idf[self._vocab[t]]) for t in terms if t in self._vocab}
        total = sum(weights.values()) + unknown * (len(terms) - len(weights))
        found = []
        for row in rows:
            present = set(self._tokens[row].tolist())
            found.append(sum(w for token, w in weights.items() if token in present) / total)
        return np.array(found)

    def save(self, folder: Path) -> None:
        """Write the index to ``folder`` all at once: a new folder is written, then swapped in."""
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}")
        staging.mkdir()
        try:
            lengths = np.array([len(t) for t in self._tokens], dtype=np.int64)
            flat = np.concatenate(self._tokens) if self._tokens else np.zeros(0, dtype=np.int32)
            np.savez(staging / _TOKENS, flat=flat.astype(np.int32), lengths=lengths)
            vocab = sorted(self._vocab, key=self._vocab.__getitem__)
            meta = {
                "state": self.state,
                "ids": self.ids,
                "sources": self.sources,
                "vocab": vocab,
                "documents": [asdict(r) for r in self.documents.values()],
            }
            (staging / _META).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
            retired = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex}")
            if folder.exists():
                folder.rename(retired)
            staging.rename(folder)
            shutil.rmtree(retired, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @classmethod
    def load(cls, folder: Path) -> "LexicalIndex | None":
        """The saved index, or None when there is none or it cannot be read (it is then rebuilt)."""
        try:
            meta = json.loads((folder / _META).read_text(encoding="utf-8"))
            arrays = np.load(folder / _TOKENS)
            flat, lengths = arrays["flat"], arrays["lengths"]
        except (OSError, ValueError, KeyError):
            return None
        tokens = np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []
        documents = {
            d["source"]: DocumentRecord(**{**d, "chunk_ids": tuple(d["chunk_ids"])}) for d in meta["documents"]
        }
        vocab = {token: i for i, token in enumerate(meta["vocab"])}
        return cls(meta["ids"], meta["sources"], tokens, vocab, documents, meta["state"])


def _token_ids(tokens: list[str], vocab: dict[str, int]) -> np.ndarray:
    return np.array([vocab.setdefault(t, len(vocab)) for t in tokens], dtype=np.int32)


def _idf(doc_freq: np.ndarray, n_docs: int) -> np.ndarray:
    """Lucene's IDF, the one bm25s scores with, so coverage weighs terms as BM25 does."""
    return np.log(1.0 + (n_docs - doc_freq + 0.5) / (doc_freq + 0.5))
