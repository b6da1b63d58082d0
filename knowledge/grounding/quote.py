"""The answer a failed check falls back to: the sentence of the sources that best matches the question, quoted.

A quote cannot contradict its source, and with its citation a reader can
check it; when no sentence shares enough words with the question, quoting
would answer something else, and the adapter's own no-answer voice (a
hand-off, a refusal) is the honest reply.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from knowledge.articles import referenced_articles
from knowledge.grounding.asked import asked_kinds
from knowledge.grounding.citations import split_sentences
from knowledge.grounding.facts import extract_facts
from knowledge.lexical import tokenize
from knowledge.passage import Passage

_LIST_MARK = re.compile(r"^\s*(?:[-*•]|\d{1,2}[.)])\s+")  # a list item is quoted without its bullet
_MAX_QUOTE_CHARS = 320
_ASKED_BONUS = 1.0  # added to a sentence's word overlap (at most 1) when it holds what is asked: it ranks first
_SHORT_SENTENCE_CHARS = 60  # a sentence this short is quoted with the next one, which usually completes it
# Words of every question that say nothing of its subject: a quote sharing only these answers something else.
_FILLER = frozenset(
    "you your yours we our us it its s t they them their this that there here get got have has had am is are was "
    "were be been will much many long any some please tell know want need like one".split()
)
_INTROS = {
    "en": "Here is what our sources say: “{quote}” {cite}",
    "zh": "资料原文：「{quote}」{cite}",
}


@dataclass(frozen=True)
class Quote:
    number: int  # the [n] of the passage quoted
    text: str
    score: float  # share of the question's words the quote holds, plus the bonus for holding what is asked


def best_quote(question: str, passages: Sequence[Passage]) -> Quote | None:
    """The sentence (with its short neighbour) holding most of the question's words; earlier passages win ties.

    A sentence that holds the kind of fact the question asks for (a phone
    number for "who do I call"), or that belongs to the article the question
    names, ranks above every sentence that does not: only it can answer.
    """
    wanted = set(tokenize(question)) - _FILLER
    kinds = asked_kinds(question)
    articles = set(referenced_articles(question))
    if not wanted:
        return None
    best: Quote | None = None
    for number, passage in enumerate(passages, start=1):
        named = bool(articles & set(referenced_articles(f"{passage.section}\n{passage.text}")))
        sentences = [_LIST_MARK.sub("", s).strip() for s in split_sentences(passage.text) if s.strip()]
        for i, sentence in enumerate(sentences):
            text = sentence
            if len(text) < _SHORT_SENTENCE_CHARS and i + 1 < len(sentences):
                text = f"{text} {sentences[i + 1]}"
            score = len(wanted & set(tokenize(text))) / len(wanted)
            if named or (kinds and any(f.kind in kinds for f in extract_facts(text).items)):
                score += _ASKED_BONUS
            if best is None or score > best.score:
                best = Quote(number, _shorten(text), score)
    return best


def quote_answer(quote: Quote, question: str) -> str:
    """The quote in the question's language, with its citation."""
    language = "zh" if re.search(r"[\u4e00-\u9fff]", question) else "en"
    return _INTROS[language].format(quote=quote.text, cite=f"[{quote.number}]")


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    if len(text) <= _MAX_QUOTE_CHARS:
        return text
    return text[: _MAX_QUOTE_CHARS - 1].rsplit(" ", 1)[0] + "…"
