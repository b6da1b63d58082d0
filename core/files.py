"""Atomic writes: a reader sees the old file or the whole new one, never a file cut short.

Everything is written under a temporary name in the target's own folder (a
rename is atomic only within one file system) and renamed over the target
once complete; a write that fails or is interrupted removes its temporary
file and leaves the target as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; it becomes ``path`` when the block succeeds."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` as UTF-8 and flush it to disk before the rename, so a crash cannot leave an empty file."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def write_json_atomic(path: Path, data: Any) -> None:
    """``data`` as indented JSON; values JSON cannot hold (paths, dates) are written as their text."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str))
