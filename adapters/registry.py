"""The adapter registry: versioned, atomic installs on disk.

Layout::

    adapters/NAME/state.json     {"current": N, "status": "enabled"}
    adapters/NAME/vN/            adapter_config.json, adapter_model.safetensors, manifest.json
    adapters/REVISION            bumped on every change, so other processes notice

An install copies into a staging folder, validates it there, renames it into
place and only then points ``state.json`` at it (``os.replace``): a crash at any
point leaves the registry serving what it served before. ``state.json`` also
lists the versions that were installed, so a version folder a crash left behind
is never served nor rolled back to; opening the registry removes such folders
and the staging folders of processes that are gone.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from filelock import FileLock

from adapters.manifest import NAME_PATTERN, BaseFingerprint, Manifest, check_name
from adapters.validation import CONFIG_FILE, WEIGHTS_FILE, AdapterLimits, validate_adapter
from core.errors import InvalidAdapterError, NotFoundError
from core.files import write_json_atomic

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
REVISION_FILE = "REVISION"
STAGING_DIR = ".staging"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _version_number(folder: Path) -> int | None:
    name = folder.name
    return int(name[1:]) if folder.is_dir() and name[:1] == "v" and name[1:].isdigit() else None


class Registry:
    """Adapters on disk under one root; every change is atomic and bumps the revision."""

    def __init__(
        self, root: Path, fingerprint: BaseFingerprint | None = None, limits: AdapterLimits | None = None
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint
        self.limits = limits or AdapterLimits()
        self._lock = FileLock(str(self.root / ".lock"))
        self.clean()

    def revision(self) -> int:
        try:
            return int((self.root / REVISION_FILE).read_text())
        except (OSError, ValueError):
            return 0

    def _bump(self) -> None:
        (self.root / REVISION_FILE).write_text(str(self.revision() + 1))

    def _state(self, name: str) -> dict[str, Any] | None:
        try:
            state = json.loads((self.root / name / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return None
        return state if isinstance(state, dict) else None

    def _folders(self, name: str) -> list[int]:
        """Every version folder on disk, installed or left behind by a crash."""
        folder = self.root / name
        if not folder.is_dir():
            return []
        return sorted(v for p in folder.iterdir() if (v := _version_number(p)) is not None)

    def _versions(self, name: str, state: dict[str, Any] | None = None) -> list[int]:
        """The installed versions: those ``state.json`` lists (a registry of older releases: every folder with a manifest)."""
        state = self._state(name) if state is None else state
        on_disk = [v for v in self._folders(name) if (self.root / name / f"v{v}" / "manifest.json").is_file()]
        listed = (state or {}).get("versions")
        return on_disk if not isinstance(listed, list) else [v for v in on_disk if v in listed]

    def clean(self) -> None:
        """Remove what interrupted installs and removals left: staging folders of processes that are gone,
        version folders no ``state.json`` lists, and name folders an install never committed."""
        staging = self.root / STAGING_DIR
        if staging.is_dir():
            for stage in staging.iterdir():
                owner = stage.name.split("-", 1)[0]
                if not (owner.isdigit() and _process_alive(int(owner))):
                    log.info("removing staging debris %s", stage.name)
                    shutil.rmtree(stage, ignore_errors=True) if stage.is_dir() else stage.unlink(missing_ok=True)
        with self._lock:
            for folder in self.root.iterdir():
                if not (folder.is_dir() and NAME_PATTERN.match(folder.name)):
                    continue
                state = self._state(folder.name)
                if state is None and not (folder / STATE_FILE).exists():
                    if all(_version_number(p) is not None for p in folder.iterdir()):
                        log.info("removing %s: an install that never completed", folder.name)
                        shutil.rmtree(folder, ignore_errors=True)
                    continue
                if state is None or not isinstance(state.get("versions"), list):
                    continue
                for version in self._folders(folder.name):
                    if version not in state["versions"]:
                        log.info("removing %s v%d: an install that never completed", folder.name, version)
                        shutil.rmtree(folder / f"v{version}", ignore_errors=True)

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and (p / STATE_FILE).is_file())

    def get(self, name: str, version: int | None = None) -> Manifest:
        check_name(name)
        state = self._state(name)
        if state is None:
            raise NotFoundError(f"no adapter named {name!r}")
        version = state.get("current") if version is None else version
        folder = self.root / name / f"v{version}"
        if not folder.is_dir() or version not in self._versions(name, state):
            raise NotFoundError(f"adapter {name!r} has no version {version}")
        return Manifest.read(folder, status=state.get("status", "enabled"))

    def served(self, name: str) -> Manifest:
        """The version of ``name`` that answers requests, or a clear error when it cannot answer."""
        manifest = self.get(name)
        if not manifest.enabled:
            raise NotFoundError(f"adapter {name!r} is disabled (switchboard adapters enable {name})")
        return manifest

    def list(self) -> list[Manifest]:
        """Every adapter that can be read; one whose files are damaged is logged and left out, never fatal."""
        manifests = []
        for name in self.names():
            try:
                manifests.append(self.get(name))
            except (InvalidAdapterError, NotFoundError) as exc:
                log.warning("adapter %s is unreadable and left out: %s", name, exc)
        return manifests

    def versions(self, name: str) -> list[Manifest]:
        self.get(name)
        state = self._state(name) or {}
        return [Manifest.read(self.root / name / f"v{v}", state.get("status", "enabled")) for v in self._versions(name)]

    def check_installed(self) -> dict[str, str]:
        """Validate every enabled adapter as an install would; disable each that fails, with the reason logged.

        Run at start: an adapter written by an older release or changed on disk must cost only its own
        requests, never the server's start. Returns the reasons by adapter name.
        """
        failures: dict[str, str] = {}
        for name in self.names():
            state = self._state(name)
            if state is None:
                log.warning("adapter %s has an unreadable %s and is not served", name, STATE_FILE)
                continue
            if state.get("status", "enabled") != "enabled":
                continue
            try:
                validate_adapter(Path(self.get(name).path), self.fingerprint, self.limits)
            except (InvalidAdapterError, NotFoundError) as exc:
                failures[name] = str(exc)
                log.warning("adapter %s fails its checks and is disabled: %s", name, exc)
                self._set_state(name, status="disabled", reason=str(exc))
        return failures

    def _set_state(self, name: str, **changes: Any) -> None:
        with self._lock:
            state = self._state(name)
            if state is None:
                raise NotFoundError(f"no adapter named {name!r}")
            write_json_atomic(self.root / name / STATE_FILE, {**state, **changes})
            self._bump()

    def adapter_dir(self, name: str, version: int | None = None) -> Path:
        return Path(self.get(name, version).path)

    def install(
        self,
        source_dir: Path,
        name: str,
        *,
        description: str = "",
        examples: list[str] | None = None,
        keywords: list[str] | None = None,
        collections: list[str] | None = None,
        system_prompt: str | None = None,
        no_answer: str | None = None,
        generation: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> Manifest:
        """Validate ``source_dir`` and install it as the next version of ``name``, enabled and current."""
        check_name(name)
        source_dir = Path(source_dir)
        validate_adapter(source_dir, self.fingerprint, self.limits)  # fail before copying anything
        staging_root = self.root / STAGING_DIR
        staging_root.mkdir(exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-{name}-", dir=staging_root))
        try:
            for file_name in (CONFIG_FILE, WEIGHTS_FILE):
                shutil.copyfile(source_dir / file_name, stage / file_name)
            info = validate_adapter(stage, self.fingerprint, self.limits)  # what is installed is what was checked
            with self._lock:
                previous = self._state(name) or {}
                installed = self._versions(name, previous)
                version = max(self._folders(name), default=0) + 1
                manifest = Manifest(
                    name=name,
                    version=version,
                    description=description,
                    base_model=self.fingerprint.base_model if self.fingerprint else info.base_model_name_or_path,
                    fingerprint=self.fingerprint.summary() if self.fingerprint else {},
                    rank=info.rank,
                    alpha=info.alpha,
                    target_modules=info.target_modules,
                    size_bytes=info.size_bytes,
                    examples=list(examples or []),
                    keywords=list(keywords or []),
                    collections=list(collections or []),
                    system_prompt=system_prompt or "",
                    no_answer=no_answer or "",
                    generation=dict(generation or {}),
                    metrics=dict(metrics or {}),
                    provenance=dict(provenance or {}),
                )
                manifest.write(stage)
                (self.root / name).mkdir(exist_ok=True)
                target = self.root / name / f"v{version}"
                stage.rename(target)
                state = {"current": version, "status": previous.get("status", "enabled"), "versions": [*installed, version]}
                write_json_atomic(self.root / name / STATE_FILE, state)
                self._bump()
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return self.get(name)

    def set_status(self, name: str, status: str) -> Manifest:
        """Enable or disable the adapter; enabling checks its files again (they may have changed on disk)."""
        if status not in ("enabled", "disabled"):
            raise InvalidAdapterError(f"status must be 'enabled' or 'disabled', not {status!r}")
        if status == "enabled":
            validate_adapter(Path(self.get(name).path), self.fingerprint, self.limits)
        self._set_state(name, status=status, reason=None)
        return self.get(name)

    def rollback(self, name: str) -> Manifest:
        """Serve the newest version older than the current one."""
        with self._lock:
            current = self.get(name)
            older = [v for v in self._versions(name) if v < current.version]  # installed ones only, never debris
            if not older:
                raise NotFoundError(f"adapter {name!r} has no version before v{current.version} to roll back to")
            state = self._state(name) or {}
            write_json_atomic(self.root / name / STATE_FILE, {**state, "current": older[-1]})
            self._bump()
        return self.get(name)

    def update(self, name: str, **changes: Any) -> Manifest:
        """Change manifest fields (description, examples, ...) of the current version in place."""
        with self._lock:
            manifest = replace(self.get(name), **changes)
            folder = Path(manifest.path)
            manifest.write(folder)
            self._bump()
        return self.get(name)

    def remove(self, name: str, version: int | None = None) -> None:
        """Remove one version, or every version when ``version`` is None."""
        with self._lock:
            current = self.get(name)
            if version is None or self._versions(name) == [version]:
                trash = self.root / STAGING_DIR / f"{os.getpid()}-removed-{name}"
                (self.root / STAGING_DIR).mkdir(exist_ok=True)
                shutil.rmtree(trash, ignore_errors=True)
                (self.root / name).rename(trash)  # one rename: the name vanishes atomically
                shutil.rmtree(trash, ignore_errors=True)
            else:
                if version not in self._versions(name):
                    raise NotFoundError(f"adapter {name!r} has no version {version}")
                if version == current.version:
                    raise InvalidAdapterError(f"v{version} of {name!r} is being served; roll back or install another first")
                state = self._state(name) or {}
                kept = [v for v in self._versions(name, state) if v != version]
                write_json_atomic(self.root / name / STATE_FILE, {**state, "versions": kept})
                shutil.rmtree(self.root / name / f"v{version}")
            self._bump()
