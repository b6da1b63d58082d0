"""Check a generated answer against the sources it was given, repair what can be repaired, replace the rest.

Fine-tuning gives an adapter its voice; only the sources give it facts. A
small model still cites [7] with four sources, names Article 9 beside a
source that is Article 12, or writes a phone number that no page holds. So
every answer with sources passes through :func:`ground_answer` before anyone
sees it:

1. citations: a marker naming no given source is removed; a sentence naming
   an article is made to cite the source that holds it;
2. facts: each fact of a sentence (see :mod:`.facts`) must be in a source the
   sentence cites; one found in another given source gets that citation
   added; a sentence with one found in no source (nor in the question) is
   dropped, and the answer fails when nothing of it is left;
3. an answer citing nothing gets the citation of the source that supports it,
   or fails;
4. an answer without the kind of fact its question asks for (a phone number
   for "who do I call", a duration for "how long") is unanswered, and fails;
5. a failed answer is replaced by a quote of the best-matching passage, or by
   the adapter's no-answer text; the answer keeps the question's script.

The report keeps what the model wrote and every problem, so the log can keep
a failed answer out of training data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

from core.sections import GroundingConfig
from knowledge.articles import referenced_articles
from knowledge.grounding.asked import answering_kinds, asked_kinds
from knowledge.grounding.citations import add_citations, cited, rewrite_citations, split_sentences
from knowledge.grounding.facts import Facts, extract_facts, source_facts
from knowledge.grounding.quote import best_quote, quote_answer
from knowledge.grounding.script import chinese_script, in_script
from knowledge.lexical import tokenize
from knowledge.passage import Passage

Action = Literal["passed", "repaired", "replaced", "unchecked"]


@dataclass
class GroundingReport:
    """What was shown, what was generated, and why they differ."""

    answer: str = field(metadata={"help": "The answer shown to the user."})
    generated: str = field(metadata={"help": "The answer as the model wrote it."})
    action: Action = field(
        metadata={"help": "passed: shown as written; repaired: citations fixed; replaced: a quote or the "
                  "no-answer text shown instead; unchecked: no sources to check against."}
    )
    problems: list[str] = field(default_factory=list, metadata={"help": "Every check that failed, in words."})
    facts_checked: int = field(default=0, metadata={"help": "Facts of the generated answer compared with the sources."})
    grounded: bool = field(
        default=True,
        metadata={"help": "The model's answer stated no fact its sources lack, cited what it rests on and gave what "
                  "was asked; False keeps the turn out of training data, whatever was shown."},
    )

    @property
    def clean(self) -> bool:
        """Whether the model's own answer passed every check untouched."""
        return not self.problems

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Source:
    facts: Facts
    articles: frozenset[str]
    words: frozenset[str]


def ground_answer(
    answer: str,
    passages: Sequence[Passage],
    question: str,
    config: GroundingConfig,
    no_answer: str,
) -> GroundingReport:
    """Check ``answer`` against ``passages`` (numbered from 1 as the prompt showed them); see the module doc."""
    script = chinese_script(question) if config.keep_script else None
    if not passages or not (config.check_citations or config.check_facts):
        return GroundingReport(in_script(answer, script), answer, "unchecked")
    sources = [_source(p) for p in passages]
    asked = extract_facts(question)
    problems: list[str] = []
    checked = 0
    sentences = []
    for sentence in split_sentences(answer):
        if config.check_citations:
            sentence = _valid_citations(sentence, len(sources), problems)
            sentence = _article_citations(sentence, sources, problems)
        if config.check_facts:
            sentence, count, grounded = _grounded_facts(sentence, sources, asked, problems, config.check_citations)
            checked += count
            if not grounded:
                continue  # a sentence stating what no source holds is dropped; the rest may still stand
        sentences.append(sentence)
    shown = "".join(sentences).strip()
    if config.check_citations and not cited(shown) and shown.strip():
        shown = _cite_support(shown, sources, config.min_support, problems)
    kinds = asked_kinds(question)
    if config.check_facts and kinds and not any(f.kind in answering_kinds(kinds) for f in extract_facts(shown).items):
        problems.append(f"unanswered: the question asks for a {' or '.join(sorted(kinds))} and the answer gives none")
    failed = not shown or any(p.startswith(_FAILS) for p in problems)
    if failed:
        quote = best_quote(question, passages)
        usable = quote is not None and quote.score >= config.min_quote_overlap
        shown = quote_answer(quote, question) if usable else no_answer
        action: Action = "replaced"
    else:
        action = "repaired" if problems else "passed"
    grounded = not any(p.startswith((*_FAILS, _UNGROUNDED)) for p in problems)
    return GroundingReport(in_script(shown, script), answer, action, problems, checked, grounded)


_UNGROUNDED = "ungrounded"  # a sentence was dropped: the answer may stand without it
_FAILS = ("unsupported", "unanswered")  # the answer cannot stand


def _source(passage: Passage) -> _Source:
    text = f"{passage.section}\n{passage.text}"
    return _Source(source_facts(text), frozenset(referenced_articles(text)), frozenset(tokenize(passage.text)))


def _valid_citations(sentence: str, count: int, problems: list[str]) -> str:
    def keep(numbers: list[int]) -> list[int]:
        for n in numbers:
            if not 1 <= n <= count:
                problems.append(f"citation [{n}] removed: {count} source{'s' if count != 1 else ''} were given")
        return [n for n in numbers if 1 <= n <= count]

    return rewrite_citations(sentence, keep)


def _article_citations(sentence: str, sources: list[_Source], problems: list[str]) -> str:
    """A sentence naming an article cites the sources holding it; a citation of another article is re-pointed."""
    articles = referenced_articles(sentence)
    numbers = cited(sentence)
    if not articles or not numbers:
        return sentence
    holders = [i + 1 for i, s in enumerate(sources) if s.articles & set(articles)]
    wrong = [n for n in numbers if not sources[n - 1].articles & set(articles)]
    if not wrong or not holders:
        return sentence  # an article in no source is a fact check's failure, not a citation's
    for n in wrong:
        problems.append(f"citation [{n}] re-pointed to [{holders[0]}]: the sentence names Article {articles[0]}")
    return rewrite_citations(sentence, lambda ns: [holders[0] if n in wrong else n for n in ns])


def _grounded_facts(
    sentence: str, sources: list[_Source], asked: Facts, problems: list[str], may_cite: bool
) -> tuple[str, int, bool]:
    """Each fact must be in a cited source; one in an uncited source gets its citation; one in none (nor in the
    question) makes the sentence ungrounded. Returns the sentence, its fact count and whether it is grounded."""
    facts = extract_facts(sentence).items
    numbers = cited(sentence)
    added: list[int] = []
    for fact in facts:
        if any(sources[n - 1].facts.holds(fact) for n in numbers + added if n <= len(sources)):
            continue
        holder = next((i + 1 for i, s in enumerate(sources) if s.facts.holds(fact)), None)
        if holder is not None and may_cite:
            added.append(holder)
            problems.append(f"citation [{holder}] added for {fact.kind} '{fact.text}'")
        elif holder is None and not asked.holds(fact):
            problems.append(f"{_UNGROUNDED} {fact.kind} '{fact.text}': in no source, its sentence dropped")
            return sentence, len(facts), False
    return add_citations(sentence, added), len(facts), True


def _cite_support(answer: str, sources: list[_Source], min_support: float, problems: list[str]) -> str:
    """Cite the source holding most of an uncited answer's words, or record the answer as unsupported."""
    words = set(tokenize(answer))
    if not words:
        return answer
    shares = [len(words & s.words) / len(words) for s in sources]
    best = max(range(len(sources)), key=shares.__getitem__)
    if shares[best] < min_support:
        problems.append(f"unsupported: the answer cites no source and shares {shares[best]:.0%} of its words with the best one")
        return answer
    problems.append(f"citation [{best + 1}] added: the answer cited no source")
    sentences = split_sentences(answer)
    last = max(i for i, s in enumerate(sentences) if s.strip())
    sentences[last] = add_citations(sentences[last], [best + 1])
    return "".join(sentences)


@dataclass(frozen=True)
class Audit:
    """A read-only verdict on an answer as shown: what the benchmark and the tests measure."""

    cites: bool = field(metadata={"help": "The answer cites at least one source."})
    citations_valid: bool = field(
        metadata={"help": "Every [n] names a given source, and every sentence naming an article cites one holding it."}
    )
    facts_grounded: bool = field(metadata={"help": "Every fact is in a source the answer cites, or in the question."})
    ungrounded: tuple[str, ...] = field(default=(), metadata={"help": "The facts no cited source holds."})


def audit_answer(answer: str, passages: Sequence[Passage], question: str) -> Audit:
    """Judge ``answer`` without changing it, by the same rules :func:`ground_answer` enforces."""
    sources = [_source(p) for p in passages]
    numbers = cited(answer)
    valid = all(1 <= n <= len(sources) for n in numbers)
    for sentence in split_sentences(answer):
        articles = set(referenced_articles(sentence))
        own = [n for n in cited(sentence) if 1 <= n <= len(sources)]
        if articles and own and not any(sources[n - 1].articles & articles for n in own):
            valid = False
    citing = [sources[n - 1] for n in numbers if 1 <= n <= len(sources)]
    asked = extract_facts(question)
    ungrounded = tuple(
        fact.text
        for fact in extract_facts(answer).items
        if not asked.holds(fact) and not any(s.facts.holds(fact) for s in citing)
    )
    return Audit(bool(numbers), valid, not ungrounded, ungrounded)
