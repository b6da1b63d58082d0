"""From paths on disk to documents ready to embed, and the report of what happened to each.

Everything that can go wrong with a file (missing, too large, unsupported,
empty, binary, encrypted, corrupt) is found here, before anything is written,
so a bad file costs only its own line in ``skipped``.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from knowledge.chunking import Chunk, Chunker
from knowledge.lexical import DocumentRecord
from knowledge.loaders import LoadedDocument, UnreadableDocument

# Bump when loading or chunking changes what a file turns into, so re-ingesting re-chunks unchanged files.
PIPELINE_VERSION = "1"


@dataclass
class IngestReport:
    collection: str = field(metadata={"help": "Collection the documents went into."})
    documents: int = field(default=0, metadata={"help": "Documents written (new or replaced)."})
    chunks: int = field(default=0, metadata={"help": "Chunks written."})
    skipped: list[dict] = field(default_factory=list, metadata={"help": "{path, reason} of every file not ingested."})
    unchanged: list[str] = field(
        default_factory=list, metadata={"help": "Sources already ingested with identical content and settings."}
    )

    def skip(self, path: Path | str, reason: str) -> None:
        self.skipped.append({"path": str(path), "reason": reason})

    def to_dict(self) -> dict:
        return asdict(self)


UPLOAD = "upload"  # the origin of uploaded files, whose path on the uploader's machine is unknown


@dataclass
class PreparedDocument:
    path: Path
    source: str
    title: str
    doc_hash: str
    chunks: list[Chunk]
    origin: str


def origin_of(path: Path, uploaded: bool) -> str:
    """What tells two files of one name apart: the absolute path, unknown for uploads."""
    return UPLOAD if uploaded else str(path.resolve())


def name_taken(record_origin: str, origin: str) -> bool:
    """Whether a file would silently replace a different document of the same name.

    A file from the path the document was ingested from is its new version.
    An upload carries no path, so an upload cannot prove it is the same
    document, and a document ingested before origins were kept ('') is
    replaced as it always was.
    """
    return bool(record_origin) and (origin != record_origin or origin == UPLOAD)


def name_taken_reason(name: str, record: DocumentRecord, uploaded: bool) -> str:
    """Why a file of a taken name was skipped, and the three ways on; server paths are not shown."""
    where = "uploaded" if record.origin == UPLOAD else "ingested from another folder"
    flag = "ask to replace it ('Replace documents of the same name' in the UI, replace=true in the upload form)"
    if not uploaded:
        flag = "pass --replace to replace it"
    return (
        f"a different document named '{name}' is already in the collection ({where} {record.ingested_at}); "
        f"rename this file to keep both, remove the old one first, or {flag}"
    )


def expand(paths: list[Path], report: IngestReport) -> list[Path]:
    """Files named or found (recursively, hidden ones aside) in named folders; a source name used twice is skipped."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(
                p
                for p in sorted(path.rglob("*"))
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.is_file():
            files.append(path)
        else:
            report.skip(path, "no such file or folder")
    unique: dict[str, Path] = {}
    for path in files:
        if path.name in unique:
            report.skip(path, f"another file named '{path.name}' is in this batch (sources are file names)")
        else:
            unique[path.name] = path
    return list(unique.values())


def read(path: Path, max_bytes: int, fingerprint: str) -> tuple[bytes, str]:
    """The file's bytes and its hash, salted with the pipeline settings; oversized files are refused unread."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise UnreadableDocument(f"file is {_human(size)}, over the {_human(max_bytes)} limit")
        data = path.read_bytes()
    except OSError as exc:
        raise UnreadableDocument(f"cannot read file ({exc.strerror or exc})") from exc
    return data, hashlib.sha256(fingerprint.encode() + b"\0" + data).hexdigest()


def _human(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} bytes"


def prepare(
    path: Path, document: LoadedDocument, doc_hash: str, chunker: Chunker, origin: str
) -> PreparedDocument:
    chunks = chunker.split(document)
    if not chunks:
        raise UnreadableDocument("no text to index")
    return PreparedDocument(path, path.name, document.title, doc_hash, chunks, origin)


def chunk_id(collection: str, source: str, index: int, text: str) -> str:
    """Stable across re-ingests: the same text at the same place keeps its id."""
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]
    return f"{collection}:{source}:{index}:{digest}"
