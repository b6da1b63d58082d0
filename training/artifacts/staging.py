"""Writing an export so that a failed or killed one leaves no half-written artefact.

Everything is written into a hidden folder beside the target,
``.NAME.partial-PID-XXXX``, and renamed into place only when complete. A process
killed mid-write cannot clean up after itself, so every export first removes
the partial folders of dead processes beside its target.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.errors import InvalidRequestError

PARTIAL = ".partial-"
HASH_CHUNK = 1 << 20


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(target: Path) -> list[Path]:
    """Partial folders for ``target`` left by processes that no longer run (``.NAME.partial-PID-XXXX``)."""
    removed = []
    for path in target.parent.glob(f".{target.name}{PARTIAL}*"):
        pid = path.name.rsplit(PARTIAL, 1)[-1].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def check_target(target: Path, force: bool) -> None:
    if target.exists() and not force:
        raise InvalidRequestError(f"{target.name}: the output folder exists; choose another or pass --force to replace it")
    if target.exists() and not target.is_dir():
        raise InvalidRequestError(f"{target.name}: exists and is not a folder")


def check_space(folder: Path, needed: int, keep_free: int) -> None:
    """Refuse before writing anything when ``needed`` bytes would leave less than ``keep_free`` on the disk."""
    free = shutil.disk_usage(folder).free
    if free - needed < keep_free:
        raise InvalidRequestError(
            f"not enough disk space: the export needs about {needed / 1e6:,.0f} MB and {keep_free / 1e6:,.0f} MB must "
            f"stay free, but {free / 1e6:,.0f} MB are free"
        )


@contextmanager
def staged_folder(target: Path, force: bool) -> Iterator[Path]:
    """A fresh folder to write into; on success it becomes ``target`` with one rename, on failure it is removed."""
    target = Path(target).absolute()
    check_target(target, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target)
    prefix = f".{target.name}{PARTIAL}{os.getpid()}-"
    stage = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    stage.chmod(0o755)  # mkdtemp's 0700 would follow the artefact to its final name
    try:
        yield stage
        for path in stage.rglob("*"):
            if path.is_file():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
        if target.exists():  # --force: the old folder goes only once the new one is whole
            old = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
            target.rename(old / target.name)
            stage.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            stage.rename(target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe_files(folder: Path) -> list[dict]:
    """``[{"path", "bytes", "sha256"}]`` for every file written, paths relative to the folder."""
    return [
        {"path": str(path.relative_to(folder)), "bytes": path.stat().st_size, "sha256": sha256_of(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    ]
