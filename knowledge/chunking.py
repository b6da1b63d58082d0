"""Documents to retrievable chunks, sized in tokens of the embedding model.

Structure decides the unit before size does: a statute is cut at its
articles so one article is one retrievable unit; Markdown (and HTML and DOCX,
which the loaders render as Markdown) is cut at its headings; FAQ rows are
never split. Only units longer than the budget are split further, at
paragraph, line and sentence ends in English and Chinese (。！？；) before
words.

Every chunk keeps its context (heading path, or chapter and article) apart
from its text: the context is embedded and indexed with the text, so a chunk
under "Returns > Refunds" is found by a question about returns, while the
text a user or the model reads, and the section it is cited by, stay clean:
``warranty.md (Warranty periods): Backpacks are covered for 3 years.``
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from knowledge.articles import CHAPTER_HEADING, find_article_headings
from knowledge.loaders import LoadedDocument

# Coarsest first; Chinese sentence ends carry no trailing space, English ones do.
SEPARATORS = ["\n\n", "\n", "。", "！", "？", "；", ". ", "! ", "? ", "; ", "，", ", ", " ", ""]
_MARKDOWN_LEVELS = [("#" * n, f"h{n}") for n in range(1, 7)]
_SPECIAL_TOKENS = 2  # [CLS] and [SEP] share the encoder's window with the text
_MAX_HEADING_CHARS = 100
_SENTENCE_ENDS = ("。", ".", "；", ";", "！", "!", "？", "?")


@dataclass(frozen=True)
class Chunk:
    text: str = field(metadata={"help": "The content a reader sees and a citation quotes."})
    context: str = field(default="", metadata={"help": "Heading path or chapter > article, embedded and indexed too."})
    section: str = field(default="", metadata={"help": "Innermost heading, article heading or page label."})
    page: int | None = field(default=None, metadata={"help": "1-based page where the chunk starts, for paged formats."})
    article: str | None = field(default=None, metadata={"help": "Normalized article number for statutes ('12')."})

    @property
    def searchable(self) -> str:
        return searchable_text(self.text, self.context)


def searchable_text(text: str, context: str) -> str:
    """What is embedded and indexed for a chunk: its context line, then its text."""
    return f"{context}\n{text}" if context else text


@dataclass
class _Unit:
    text: str
    section: str = ""
    page: int | None = None
    article: str | None = None
    context: str = ""  # carried by every piece the unit is split into


class Chunker:
    """Splits loaded documents into chunks of at most ``chunk_tokens`` tokens of the embedding model."""

    def __init__(self, tokenizer, chunk_tokens: int, chunk_overlap: int, max_tokens: int) -> None:
        self._tokenizer = tokenizer
        self._backend = _untruncated_copy(getattr(tokenizer, "backend_tokenizer", None))
        self.limit = max(16, min(chunk_tokens, max_tokens - _SPECIAL_TOKENS))
        self.overlap = min(chunk_overlap, self.limit // 4)
        self._splitters: dict[int, object] = {}

    def count(self, text: str) -> int:
        """Tokens of ``text`` without special tokens; the fast backend also spares the over-length warning."""
        if self._backend is not None:
            return len(self._backend.encode(text, add_special_tokens=False).ids)
        return len(self._tokenizer.tokenize(text))

    def split(self, document: LoadedDocument) -> list[Chunk]:
        if document.structure == "faq":
            return [Chunk(block.text, section=block.label) for block in document.blocks]
        chunks: list[Chunk] = []
        for unit in self._units(document):
            chunks.extend(self._pieces(unit))
        return chunks

    def _units(self, document: LoadedDocument) -> list[_Unit]:
        text, pages = _joined(document)
        headings = find_article_headings(text)
        if len({h.key for h in headings}) >= 2:
            return _statute_units(text, pages, headings)
        if document.structure == "markdown":
            return _markdown_units(text)
        return [_Unit(block.text, section=block.label, page=block.page) for block in document.blocks]

    def _pieces(self, unit: _Unit) -> list[Chunk]:
        body = unit.text.strip()
        if not body:
            return []
        budget = max(self.limit - self.count(unit.context) - 1, self.limit // 2) if unit.context else self.limit
        pieces = [body] if self.count(body) <= budget else self._splitter(budget).split_text(body)
        return [Chunk(piece, unit.context, unit.section, unit.page, unit.article) for piece in pieces]

    def _splitter(self, budget: int):
        if budget not in self._splitters:
            from langchain_text_splitters import RecursiveCharacterTextSplitter

            self._splitters[budget] = RecursiveCharacterTextSplitter(
                separators=SEPARATORS,
                keep_separator="end",
                chunk_size=budget,
                chunk_overlap=min(self.overlap, budget // 4),
                length_function=self.count,
                strip_whitespace=True,
            )
        return self._splitters[budget]


def _untruncated_copy(backend):
    """A private copy of a fast tokenizer that counts every token: the shared one truncates at the model's window."""
    if backend is None:
        return None
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def _joined(document: LoadedDocument) -> tuple[str, list[tuple[int, int | None]]]:
    """The blocks as one text, with the offset where each block (and so each page) starts."""
    parts, starts, offset = [], [], 0
    for block in document.blocks:
        starts.append((offset, block.page))
        parts.append(block.text)
        offset += len(block.text) + 2
    return "\n\n".join(parts), starts


def _page_at(pages: list[tuple[int, int | None]], offset: int) -> int | None:
    page = None
    for start, number in pages:
        if start > offset:
            break
        page = number
    return page


def _clean_heading(line: str) -> str:
    return line.strip().strip("#*").strip()


def _statute_units(text: str, pages: list[tuple[int, int | None]], headings) -> list[_Unit]:
    """One unit per article; chapter headings become the context of the articles under them.

    A heading on a line of its own ("## Article 5 — Statutory guarantee",
    「第五條（法定保證）」) becomes the section and leaves the text; one that
    opens its article's first sentence (「第十二條 滿十八歲為成年。」) stays in
    the text and only its number becomes the section.
    """
    marks = [(h.start, h) for h in headings]
    marks += [(m.start(), _clean_heading(m.group("label"))) for m in CHAPTER_HEADING.finditer(text)]
    marks.sort(key=lambda mark: mark[0])
    units = []
    preamble = text[: marks[0][0]].strip()
    if preamble:
        units.append(_Unit(preamble, page=_page_at(pages, 0)))
    chapter = ""
    for (start, mark), (end, _) in zip(marks, marks[1:] + [(len(text), None)]):
        segment = text[start:end].strip()
        first_line, _, rest = segment.partition("\n")
        page = _page_at(pages, start)
        if isinstance(mark, str):
            chapter = mark
            if rest.strip():
                units.append(_Unit(rest, section=chapter, page=page, context=chapter))
            continue
        heading = _clean_heading(first_line)
        if len(heading) <= _MAX_HEADING_CHARS and not heading.endswith(_SENTENCE_ENDS) and rest.strip():
            label, body = heading, rest
        else:
            label, body = mark.label, segment
        context = f"{chapter} > {label}" if chapter else label
        units.append(_Unit(body, section=label, page=page, article=mark.key, context=context))
    return units


def _markdown_units(text: str) -> list[_Unit]:
    from langchain_text_splitters import MarkdownHeaderTextSplitter

    splitter = MarkdownHeaderTextSplitter(_MARKDOWN_LEVELS, strip_headers=True)
    units = []
    for part in splitter.split_text(text):
        headings = [str(part.metadata[key]) for _, key in _MARKDOWN_LEVELS if key in part.metadata]
        # The splitter joins paragraphs with a Markdown line break; give the chunker its paragraph breaks back.
        body = re.sub(r" {2}\n", "\n\n", part.page_content)
        units.append(_Unit(body, section=headings[-1] if headings else "", context=" > ".join(headings)))
    return units
