"""Files to text, one loader per format.

Every loader takes the file's bytes and name and returns a
:class:`LoadedDocument`, or raises :class:`UnreadableDocument` with the reason
a user should read in the ``skipped`` list. Structured formats (HTML, DOCX)
are rendered as Markdown so the chunker has one notion of headings; PDFs keep
one block per page so citations can name the page; FAQ tables keep each
question with its answer as one block that is never split.
"""

from __future__ import annotations

import csv
import io
import json
import re
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from core.errors import SwitchboardError
from core.sections import MAX_UNPACKED_BYTES

Structure = Literal["plain", "markdown", "faq"]

QUESTION_KEYS = ("question", "q", "questions", "query", "prompt", "问题", "問題")
ANSWER_KEYS = ("answer", "a", "answers", "response", "reply", "答案", "回答", "答覆", "答复")
_UTF_BOMS = (
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)
# Decoded text with more control characters than this is a binary file wearing a text extension.
_MAX_CONTROL_RATIO = 0.01
# What a container file (.docx members, one PDF stream) may unpack to, unless the caller says otherwise:
# XML parses into trees of about 40 times its size, so 25 MB of it costs about a gigabyte.
_READ_CHUNK = 1 << 20


class UnreadableDocument(SwitchboardError):
    """A file that cannot become text: empty, binary, encrypted, corrupt or of an unsupported type."""

    status_code = 422


@dataclass
class Block:
    text: str = field(metadata={"help": "Text of one page, section or FAQ row."})
    page: int | None = field(default=None, metadata={"help": "1-based page number, for paged formats."})
    label: str = field(default="", metadata={"help": "How a citation names this block when no structure is found."})


@dataclass
class LoadedDocument:
    title: str = field(
        metadata={"help": "Title from the document's own metadata or first heading, else the file stem."}
    )
    blocks: list[Block] = field(metadata={"help": "Text in reading order."})
    structure: Structure = field(
        default="plain", metadata={"help": "markdown: headings mark sections; faq: every block is one chunk."}
    )


def decode_text(data: bytes) -> str:
    """Bytes to text whatever the encoding: UTF-8 first, then a BOM, then charset detection.

    Binary content is refused rather than decoded into noise: a NUL byte
    outside UTF-16/32, an undetectable charset, or too many control characters.
    """
    if not data.strip():
        raise UnreadableDocument("empty file")
    for bom, encoding in _UTF_BOMS:
        if data.startswith(bom):
            try:
                return _checked(data.decode(encoding))
            except UnicodeDecodeError as exc:
                raise UnreadableDocument(f"not valid {encoding} text despite its byte-order mark") from exc
    if b"\x00" in data:
        raise UnreadableDocument("binary content (NUL bytes), not text")
    try:
        return _checked(data.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    matches = from_bytes(data)
    best = matches.best()
    if best is None:
        raise UnreadableDocument("binary content or unknown text encoding")
    # Short Western text decodes equally cleanly in several single-byte code pages (café in
    # cp1250 reads "café", crème reads "crčme"); Windows-1252 is by far the most common of them.
    tied = [m for m in matches if m.chaos == best.chaos and m.coherence == best.coherence]
    best = next((m for m in tied if m.encoding == "cp1252"), best)
    return _checked(str(best))


def _checked(text: str) -> str:
    if not text.strip():
        raise UnreadableDocument("empty file")
    controls = sum(1 for c in text if unicodedata.category(c) == "Cc" and c not in "\t\n\r\f\v")
    if controls > _MAX_CONTROL_RATIO * len(text):
        raise UnreadableDocument("binary content, not text")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def load_text(data: bytes, name: str) -> LoadedDocument:
    return LoadedDocument(title=Path(name).stem, blocks=[Block(decode_text(data))])


def load_markdown(data: bytes, name: str) -> LoadedDocument:
    text = decode_text(data)
    first_heading = re.search(r"^#[ \t]+(.+)$", text, re.MULTILINE)
    return LoadedDocument(
        title=first_heading.group(1).strip() if first_heading else Path(name).stem,
        blocks=[Block(text)],
        structure="markdown",
    )


# Page furniture and code: what a reader of the page never reads as its content.
_HTML_DROP = ("script", "style", "noscript", "template", "nav", "svg", "iframe", "form", "button", "select", "canvas")
_HTML_BLOCKS = (
    "p",
    "div",
    "section",
    "article",
    "main",
    "li",
    "ul",
    "ol",
    "tr",
    "table",
    "pre",
    "blockquote",
    "dd",
    "dt",
    "dl",
    "br",
    "hr",
    "figcaption",
    "caption",
    "address",
)


def load_html(data: bytes, name: str) -> LoadedDocument:
    """Visible text only, headings as Markdown; site headers, footers and navigation are dropped."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(decode_text(data), "lxml")
    for tag in soup.find_all(_HTML_DROP):
        tag.decompose()
    for tag in soup.select('[role="navigation"], [aria-hidden="true"], [hidden]'):
        tag.decompose()
    for tag in soup.find_all(("header", "footer", "aside")):
        if tag.find_parent(("article", "main")) is None:
            tag.decompose()
    title_tag = soup.find("title")
    title = title_tag.get_text(" ", strip=True) if title_tag else ""
    if title_tag:
        title_tag.decompose()
    for tag in soup.find_all(re.compile(r"^h[1-6]$")):
        tag.insert_before(f"\n\n{'#' * int(tag.name[1])} ")
        tag.insert_after("\n\n")
    for tag in soup.find_all("li"):
        tag.insert_before("\n- ")
    for tag in soup.find_all(("td", "th")):
        tag.insert_after(" | ")
    for tag in soup.find_all(_HTML_BLOCKS):
        tag.insert_before("\n")
        tag.insert_after("\n")
    root = soup.body or soup
    text = _tidy(root.get_text())
    if not text:
        raise UnreadableDocument("no visible text in the page")
    if not title:
        first_heading = re.search(r"^#[ \t]+(.+)$", text, re.MULTILINE)
        title = first_heading.group(1).strip() if first_heading else Path(name).stem
    return LoadedDocument(title=title, blocks=[Block(text)], structure="markdown")


def _tidy(text: str) -> str:
    lines = [re.sub(r"[ \t\u00a0]+", " ", line).strip() for line in text.split("\n")]
    lines = [re.sub(r"(\s*\|\s*)+$", "", line) for line in lines]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def load_pdf(data: bytes, name: str, max_unpacked_bytes: int = MAX_UNPACKED_BYTES) -> LoadedDocument:
    """One block per page so every chunk can cite its page; encrypted and corrupt files are refused.

    pypdf stops any one stream at ``max_unpacked_bytes`` decoded; the text of
    all pages together is held to the same bound.
    """
    from pypdf import PdfReader, apply_configuration
    from pypdf.errors import FileNotDecryptedError, LimitReachedError, PdfReadError

    limits = {
        field: max_unpacked_bytes
        for field in (
            "maximum_declared_stream_length", "array_based_stream_maximum_output_length", "jbig2_maximum_output_length",
            "lzw_maximum_output_length", "run_length_maximum_output_length", "zlib_maximum_output_length",
            "brotli_maximum_output_length", "image_maximum_buffer_size", "stream_decoding_work_maximum_length",
        )
    }
    try:
        with apply_configuration(**limits):
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted and not reader.decrypt(""):
                raise UnreadableDocument("encrypted PDF (a password is needed to read it)")
            pages, total = [], 0
            for page in reader.pages:
                pages.append(page.extract_text() or "")
                total += len(pages[-1])
                if total > max_unpacked_bytes:
                    raise UnreadableDocument(f"its text is over the limit of {max_unpacked_bytes} characters")
            metadata_title = (reader.metadata.title if reader.metadata else None) or ""
    except UnreadableDocument:
        raise
    except LimitReachedError as exc:
        raise UnreadableDocument(f"a stream unpacks to more than {max_unpacked_bytes} bytes") from exc
    except FileNotDecryptedError as exc:
        raise UnreadableDocument("encrypted PDF (a password is needed to read it)") from exc
    except PdfReadError as exc:
        raise UnreadableDocument(f"corrupt PDF ({exc})") from exc
    except Exception as exc:  # pypdf raises many kinds of errors on malformed files
        raise UnreadableDocument(f"corrupt PDF ({type(exc).__name__}: {exc})") from exc
    blocks = [
        Block(text.strip(), page=number, label=f"page {number}")
        for number, text in enumerate(pages, start=1)
        if text.strip()
    ]
    if not blocks:
        raise UnreadableDocument("PDF has no extractable text (scanned images need OCR first)")
    return LoadedDocument(title=str(metadata_title).strip() or Path(name).stem, blocks=blocks)


def check_unpacked_size(data: bytes, max_bytes: int, kind: str) -> None:
    """Refuse a zip whose members unpack to more than ``max_bytes``, before any parser reads it.

    The sizes the archive declares are checked first; then the members are
    unpacked a chunk at a time and counted, since a declared size can lie.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as bundle:
            members = bundle.infolist()
            declared = sum(member.file_size for member in members)
            if declared > max_bytes:
                raise UnreadableDocument(f"unpacks to {declared} bytes, over the limit of {max_bytes}")
            unpacked = 0
            for member in members:
                with bundle.open(member) as handle:
                    while chunk := handle.read(_READ_CHUNK):
                        unpacked += len(chunk)
                        if unpacked > max_bytes:
                            raise UnreadableDocument(f"unpacks to more than its declared size and the limit of {max_bytes} bytes")
    except UnreadableDocument:
        raise
    except Exception as exc:  # zipfile raises BadZipFile, CRC, zlib and EOF errors on damaged archives
        raise UnreadableDocument(f"not a readable {kind} ({type(exc).__name__})") from exc


def load_docx(data: bytes, name: str, max_unpacked_bytes: int = MAX_UNPACKED_BYTES) -> LoadedDocument:
    """Paragraphs and tables in document order; Word heading styles become Markdown headings."""
    import docx
    from docx.table import Table

    check_unpacked_size(data, max_unpacked_bytes, ".docx file")
    try:
        document = docx.Document(io.BytesIO(data))
        # Paragraph.style looks the default style up among all styles each time (3 ms a paragraph): map ids once.
        style_names = {style.style_id: style.name or "" for style in document.styles}
        lines: list[str] = []
        for item in document.iter_inner_content():
            if isinstance(item, Table):
                lines.extend(" | ".join(cell.text.strip() for cell in row.cells) for row in item.rows)
                lines.append("")
                continue
            text = item.text.strip()
            if not text:
                continue
            style = style_names.get(item._p.style, "") if item._p.style else ""
            level = re.match(r"Heading (\d)", style)
            if style == "Title":
                lines += [f"# {text}", ""]
            elif level:
                lines += [f"{'#' * int(level.group(1))} {text}", ""]
            elif style.startswith("List"):
                lines.append(f"- {text}")
            else:
                lines += [text, ""]
        core_title = document.core_properties.title or ""
    except Exception as exc:  # python-docx raises zip, XML and key errors on damaged files
        raise UnreadableDocument(f"not a readable .docx file ({type(exc).__name__})") from exc
    text = _tidy("\n".join(lines))
    if not text:
        raise UnreadableDocument("document has no text")
    first_heading = re.search(r"^#[ \t]+(.+)$", text, re.MULTILINE)
    title = core_title.strip() or (first_heading.group(1).strip() if first_heading else Path(name).stem)
    return LoadedDocument(title=title, blocks=[Block(text)], structure="markdown")


def _faq_block(question: str, answer: str, label: str) -> Block:
    return Block(f"Q: {question.strip()}\nA: {answer.strip()}", label=label)


def _pick(keys: list[str], wanted: tuple[str, ...]) -> str | None:
    by_name = {k.strip().lower(): k for k in keys if k}
    return next((by_name[w] for w in wanted if w in by_name), None)


def load_faq_csv(data: bytes, name: str) -> LoadedDocument:
    """A header row, then one question and answer per row (columns named question/answer, else the first two)."""
    text = decode_text(data)
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.reader(io.StringIO(text), dialect))
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if len(rows) < 2 or len(rows[0]) < 2:
        raise UnreadableDocument("FAQ CSV needs a header row and at least one question,answer row")
    header = rows[0]
    q_col = _pick(header, QUESTION_KEYS)
    a_col = _pick(header, ANSWER_KEYS)
    qi = header.index(q_col) if q_col else 0
    ai = header.index(a_col) if a_col else 1
    blocks = []
    for number, row in enumerate(rows[1:], start=2):
        if max(qi, ai) >= len(row) or not row[qi].strip() or not row[ai].strip():
            raise UnreadableDocument(f"line {number}: a question and an answer are both required")
        blocks.append(_faq_block(row[qi], row[ai], f"line {number}"))
    return LoadedDocument(title=Path(name).stem, blocks=blocks, structure="faq")


def load_faq_jsonl(data: bytes, name: str) -> LoadedDocument:
    """One JSON object per line with a question and an answer ("question"/"answer", "q"/"a", "prompt"/"response")."""
    blocks = []
    for number, line in enumerate(decode_text(data).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UnreadableDocument(f"line {number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise UnreadableDocument(f"line {number}: expected a JSON object with a question and an answer")
        q_key = _pick(list(row), QUESTION_KEYS)
        a_key = _pick(list(row), ANSWER_KEYS)
        question, answer = row.get(q_key) if q_key else None, row.get(a_key) if a_key else None
        if not isinstance(question, str) or not isinstance(answer, str) or not question.strip() or not answer.strip():
            raise UnreadableDocument(f"line {number}: a question and an answer are both required")
        blocks.append(_faq_block(question, answer, f"line {number}"))
    if not blocks:
        raise UnreadableDocument("empty file")
    return LoadedDocument(title=Path(name).stem, blocks=blocks, structure="faq")


LOADERS: dict[str, Callable[[bytes, str], LoadedDocument]] = {
    ".txt": load_text,
    ".text": load_text,
    ".md": load_markdown,
    ".markdown": load_markdown,
    ".html": load_html,
    ".htm": load_html,
    ".pdf": load_pdf,
    ".docx": load_docx,
    ".csv": load_faq_csv,
    ".jsonl": load_faq_jsonl,
}


CONTAINERS = (load_pdf, load_docx)  # loaders that unpack, and so take max_unpacked_bytes


def load_document(data: bytes, name: str, max_unpacked_bytes: int = MAX_UNPACKED_BYTES) -> LoadedDocument:
    """Pick the loader by extension; an unknown extension is refused with the list of known ones."""
    suffix = Path(name).suffix.lower()
    loader = LOADERS.get(suffix)
    if loader is None:
        known = ", ".join(sorted(LOADERS))
        raise UnreadableDocument(f"unsupported file type '{suffix or name}' (supported: {known})")
    if loader in CONTAINERS:
        return loader(data, name, max_unpacked_bytes)
    return loader(data, name)
