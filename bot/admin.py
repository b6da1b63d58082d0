"""Live admin actions shared by the HTTP admin routes and the UI's admin tabs.

Both edges hand over uploaded files as (original name, readable source)
pairs; this module checks the token, stages the files under safe names,
unpacks adapter zips without letting a member escape the staging folder,
and applies the change to the running parts (registry, engine, router,
knowledge base) so it is live without a restart.
"""

from __future__ import annotations

import hmac
import logging
import re
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

from adapters.manifest import Manifest
from adapters.validation import CONFIG_FILE, WEIGHTS_FILE
from core.errors import InvalidRequestError, LockedError, NotFoundError, SwitchboardError
from core.files import atomic_path
from knowledge.passage import Passage

if TYPE_CHECKING:
    from bot.parts import Parts
    from training.request import TrainRequest

log = logging.getLogger(__name__)

Upload = tuple[str, "IO[bytes] | Path"]
COPY_CHUNK = 1 << 20
EXPORT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*-v[0-9]+-(merged|gguf|ollama|peft)(-[a-z0-9_]+)?$")


class UnauthorizedError(SwitchboardError):
    """An admin action without the right admin token."""

    status_code = 401


class PayloadTooLargeError(SwitchboardError):
    """A request body or upload over the configured size cap."""

    status_code = 413


class WorkerDownError(SwitchboardError):
    """The generation worker has stopped: nothing can be answered until the server restarts (no retry helps)."""

    status_code = 503


def check_token(expected: str | None, given: str | None) -> None:
    """Admin actions are open only when no token is configured (the server then binds loopback only)."""
    if expected is None:
        return
    if not given or not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
        raise UnauthorizedError("admin token missing or wrong (the value of SWITCHBOARD_ADMIN_TOKEN)")


def safe_name(name: str | None) -> str:
    """The file name of an upload; a path that could climb out of its folder is refused, not cleaned."""
    raw = (name or "").replace("\\", "/")
    path = PurePosixPath(raw)
    if not raw or "\x00" in raw or path.is_absolute() or any(part in ("", ".", "..") for part in raw.split("/")):
        raise InvalidRequestError(f"upload file name {name!r} is not a plain file name")
    return path.name


def _probe(check: Callable[[], object]) -> dict[str, Any]:
    """One part's state for ``/health``: its round-trip time, or the one-line reason it does not answer."""
    started = time.perf_counter()
    try:
        check()
    except SwitchboardError as exc:
        return {"status": "down", "error": str(exc)}
    except OSError as exc:  # a registry folder on a mount that went away
        return {"status": "down", "error": f"{type(exc).__name__}: {exc}"}
    return {"status": "ok", "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


def _adapter_of(key: str) -> str:
    """The adapter name of an engine key (``NAME__vN_TIME``, see ``Manifest.key``)."""
    return key.rsplit("__v", 1)[0]


def split_lines(text: str | None) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def split_commas(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


class Admin:
    """The admin actions of one running parts."""

    def __init__(self, parts: "Parts") -> None:
        self.parts = parts
        self._exporting = threading.Lock()
        self._following = threading.Lock()
        self._revision: int | None = None  # the registry's revision the router and the engine last followed

    @property
    def max_upload_bytes(self) -> int:
        return self.parts.settings.server.max_upload_bytes

    def health(self) -> dict[str, Any]:
        """What ``/health`` reports: each part this server relies on, with its latency, the base model and each
        adapter's status. ``status`` is "down" when a part does not answer (the route then answers 503 naming it);
        a generation worker that stopped raises, since only a restart helps."""
        parts = self.parts
        if parts.built("scheduler") and not parts.scheduler.alive:
            raise WorkerDownError("the generation worker is not running; see the server log")
        checks = {name: _probe(check) for name, check in self._probes().items()}
        down = [f"{name}: {check['error']}" for name, check in checks.items() if "error" in check]
        adapters = [{"name": m.name, "version": m.version, "status": m.status} for m in parts.registry.list()]
        report = {"status": "down" if down else "ok", "base_model": parts.settings.base_model, "adapters": adapters}
        return {**report, "parts": checks, **({"error": "; ".join(down)} if down else {})}

    def _probes(self) -> dict[str, Callable[[], object]]:
        """A cheap round trip to each shared part this process has built (a part never used is not probed)."""
        parts = self.parts
        probes: dict[str, Callable[[], object]] = {"registry": parts.registry.revision}
        if parts.built("engine"):
            probes["engine"] = parts.engine.ping
        if parts.built("log"):
            probes["database"] = parts.log.ping
        if parts.built("knowledge"):
            probes["knowledge"] = parts.knowledge.ping
        return probes

    # ---- following the registry

    def follow(self) -> bool:
        """Serve the registry as it is now, after a change made here or by a replica sharing its folder.

        The router re-reads the adapters and the engine drops what is no longer served (:meth:`_sync_engine`);
        a request always gets the version served at that moment. Costs one small file read when nothing
        changed; True when something did (the first call always).
        """
        registry = self.parts.registry
        with self._following:
            revision = registry.revision()
            if revision == self._revision:
                return False
            if self.parts.built("router"):
                self.parts.router.follow(registry)
            if self.parts.built("engine"):
                self._sync_engine({m.name: m for m in registry.list() if m.enabled})
            self._revision = revision
        return True

    def _sync_engine(self, served: dict[str, Manifest]) -> None:
        """Unload what nothing serves any more, each version once its requests finish. Loading is left to the
        first request that needs a version, or to the admin action that made the change (:meth:`_preload`):
        on a shared vLLM server the replica that made a change loads it, once, and the others find it there."""
        engine = self.parts.engine
        for key in engine.resident_adapters:
            manifest = served.get(_adapter_of(key))
            if manifest is None or manifest.key != key:
                engine.unload_adapter(key)

    def _preload(self, manifest: Manifest) -> None:
        """Load the version an admin action just made the served one, before the action answers."""
        if not (manifest.enabled and self.parts.built("engine")):
            return
        try:
            self.parts.engine.ensure(manifest)
        except SwitchboardError as exc:  # its requests get the error (and try again); the others are served
            log.warning("adapter %s v%d could not be loaded yet: %s", manifest.name, manifest.version, exc)

    def watch(self, interval_s: float) -> threading.Thread:
        """Follow the registry every ``interval_s`` seconds in the background, so a change another replica made
        is served here within that time even before a request asks for it."""

        def loop() -> None:
            while True:
                time.sleep(interval_s)
                try:
                    self.follow()
                except Exception:  # a shared folder briefly unreadable must not end the watch
                    log.warning("following the adapter registry failed; trying again", exc_info=True)

        thread = threading.Thread(target=loop, name="registry-watch", daemon=True)
        thread.start()
        return thread

    # ---- adapters

    def adapters(self) -> list[Manifest]:
        """Every installed adapter's current version, enabled or not."""
        return self.parts.registry.list()

    def adapter_names(self) -> list[str]:
        return self.parts.registry.names()

    def install_adapter(
        self,
        uploads: list[Upload],
        name: str,
        *,
        description: str = "",
        examples: list[str] | None = None,
        collections: list[str] | None = None,
        system_prompt: str | None = None,
        no_answer: str | None = None,
    ) -> Manifest:
        """Install a PEFT folder (its files, or one zip of them) as the next version of ``name``, live."""
        with self._staged(uploads) as folder:
            files = list(folder.iterdir())
            if len(files) == 1 and files[0].suffix.lower() == ".zip":
                folder = self._unzip(files[0], folder / "unzipped")
            manifest = self.parts.registry.install(
                folder,
                name,
                description=description,
                examples=examples,
                collections=collections,
                system_prompt=system_prompt,
                no_answer=no_answer,
                provenance={"source": "upload"},
            )
        self.follow()
        self._preload(manifest)
        return manifest

    def set_enabled(self, name: str, enabled: bool) -> Manifest:
        manifest = self.parts.registry.set_status(name, "enabled" if enabled else "disabled")
        self.follow()
        self._preload(manifest)
        return manifest

    def remove_adapter(self, name: str) -> None:
        """Remove every version; the engine drops its weights so a later install of the name starts clean."""
        self.parts.registry.remove(name)
        self.follow()

    def rollback_adapter(self, name: str) -> Manifest:
        """Serve the previous version again, live: the engine drops the newer weights and the router its examples."""
        manifest = self.parts.registry.rollback(name)
        self.follow()
        self._preload(manifest)
        return manifest

    def _unzip(self, archive: Path, target: Path) -> Path:
        """The adapter files of a zip, wherever they sit inside it; members are read, never extracted by path."""
        try:
            with zipfile.ZipFile(archive) as bundle:
                members = [m for m in bundle.infolist() if not m.is_dir()]
                if sum(m.file_size for m in members) > self.max_upload_bytes:
                    raise PayloadTooLargeError(f"{archive.name}: unpacks to more than {self.max_upload_bytes} bytes")
                target.mkdir()
                unpacked = 0
                for member in members:
                    base = safe_name(member.filename)
                    if base.startswith(".") or member.filename.startswith("__MACOSX/"):
                        continue
                    if (target / base).exists():
                        raise InvalidRequestError(f"{archive.name}: holds more than one {base}")
                    with bundle.open(member) as source:  # counted as it unpacks: a declared size can lie
                        unpacked += self._copy(source, target / base, self.max_upload_bytes - unpacked)
        except zipfile.BadZipFile as exc:
            raise InvalidRequestError(f"{archive.name}: not a valid zip file ({exc})") from None
        if not (target / CONFIG_FILE).is_file():
            raise InvalidRequestError(f"{archive.name}: no {CONFIG_FILE} inside (expected {CONFIG_FILE} and {WEIGHTS_FILE})")
        return target

    # ---- exports

    @property
    def exports_dir(self) -> Path:
        return self.parts.settings.home / "exports"

    def export_adapter(
        self, name: str, format: str, version: int | None = None, dtype: str | None = None, progress=None
    ) -> dict[str, Any]:
        """Build an export under the home's ``exports/`` (replacing an older build of the same one), one at a time.

        The result names the export by its id, never by its path on the server.
        """
        from training.artifacts.builder import export_adapter
        from training.artifacts.config import export_config

        manifest = self.parts.registry.get(name, version)
        precision = export_config(format=format, out=self.exports_dir, dtype=dtype).precision
        export_id = "-".join(p for p in (manifest.name, f"v{manifest.version}", format, precision) if p)
        config = export_config(format=format, out=self.exports_dir / export_id, dtype=dtype, force=True)
        if not self._exporting.acquire(blocking=False):
            raise LockedError("an export is already running; try again when it has finished")
        try:
            self._archive_path(export_id).unlink(missing_ok=True)
            kwargs = {"progress": progress} if progress else {}
            result = export_adapter(self.parts.settings, self.parts.registry, name, config, manifest.version, **kwargs)
        finally:
            self._exporting.release()
        folder = result.pop("out")
        result["usage"] = [line.replace(folder, export_id) for line in result["usage"]]
        return {"id": export_id, **result, "download": f"/admin/exports/{export_id}.zip"}

    def _archive_path(self, export_id: str) -> Path:
        return self.exports_dir / f"{export_id}.zip"

    def export_archive(self, export_id: str) -> Path:
        """One zip of a finished export (built on first request, stored: weights barely compress)."""
        if not EXPORT_ID.match(export_id) or not (self.exports_dir / export_id).is_dir():
            raise NotFoundError(f"no export named {export_id!r}; build it first")
        archive = self._archive_path(export_id)
        if not archive.is_file():
            folder = self.exports_dir / export_id
            with atomic_path(archive) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as bundle:
                for path in sorted(folder.rglob("*")):
                    if path.is_file():
                        bundle.write(path, f"{export_id}/{path.relative_to(folder)}")
        return archive

    # ---- knowledge

    def collections(self) -> list[dict[str, Any]]:
        """[{name, documents, chunks}] of every knowledge collection."""
        return self.parts.knowledge.list_collections()

    def documents(self, collection: str) -> list[dict[str, Any]]:
        return self.parts.knowledge.list_documents(collection)

    def search(self, query: str, collections: list[str]) -> list[Passage]:
        """What retrieval finds for ``query``, for an operator checking a collection (unknown names are errors)."""
        return self.parts.knowledge.search(query, collections)

    def ingest(
        self, uploads: list[Upload], collection: str, progress: bool = False, replace: bool = False
    ) -> dict[str, Any]:
        """Ingest uploaded documents; each keeps its original file name as its source.

        An upload whose name a different document already has is skipped with
        the reason unless ``replace``: an upload carries no path that could
        show it is a new version of that document.
        """
        with self._staged(uploads) as folder:
            files = sorted(folder.iterdir())
            report = self.parts.knowledge.ingest(files, collection, progress=progress, replace=replace, uploaded=True)
        result = report.to_dict()
        for item in result["skipped"]:  # report the upload's name, not the staging path
            item["path"] = Path(item["path"]).name
        return result

    def remove_document(self, source: str, collection: str) -> dict[str, Any]:
        return self.parts.knowledge.remove(source, collection)

    # ---- feedback an operator vouches for

    def untrusted_feedback(self) -> list[dict[str, Any]]:
        """Ratings sent without the answer's feedback token, waiting for an operator."""
        return self.parts.log.untrusted_feedback()

    def accept_feedback(self, message_id: str) -> int:
        """Trust the untrusted ratings of one answer; the count accepted."""
        return self.parts.log.accept_feedback(message_id)

    # ---- training

    def start_training(self, request: TrainRequest | dict[str, Any]) -> str:
        """Start a background run (one at a time) and return its id at once."""
        return self.parts.training_runs.start(request)

    def training_status(self, run_id: str) -> dict[str, Any]:
        return self.parts.training_runs.status(run_id)

    def active_training(self) -> dict[str, Any] | None:
        """The run in progress on this or any replica sharing the log, for the Training tab to follow."""
        return self.parts.training_runs.active()

    def preview_training(self, request: TrainRequest) -> dict[str, Any]:
        """The dataset card a run of ``request`` would train on, built without training."""
        from training.train import preview_dataset

        parts = self.parts
        return preview_dataset(request, settings=parts.settings, registry=parts.registry, log=parts.log)

    # ---- staging

    @contextmanager
    def _staged(self, uploads: Iterable[Upload]):
        """A temporary folder holding the uploads under their checked names, removed afterwards."""
        uploads = list(uploads)
        if not uploads:
            raise InvalidRequestError("no files uploaded")
        folder = Path(tempfile.mkdtemp(prefix="switchboard-upload-"))
        try:
            total = 0
            for original, source in uploads:
                name = safe_name(original)
                target = folder / name
                if target.exists():
                    raise InvalidRequestError(f"file {name!r} was uploaded twice")
                total += self._copy(source, target, self.max_upload_bytes - total)
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _copy(self, source: "IO[bytes] | Path", target: Path, allowance: int) -> int:
        written = 0
        handle = open(source, "rb") if isinstance(source, (str, Path)) else source
        try:
            with open(target, "wb") as sink:
                while chunk := handle.read(COPY_CHUNK):
                    written += len(chunk)
                    if written > allowance:
                        raise PayloadTooLargeError(f"uploads are over the limit of {self.max_upload_bytes} bytes")
                    sink.write(chunk)
        finally:
            if handle is not source:
                handle.close()
        return written
