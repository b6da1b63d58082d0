"""Training runs in the background, for the admin API and the UI.

``RunManager.start`` validates the request, answers with a run id at once and
trains in a thread; ``status`` reports the state, the phase, step/total with
an ETA, the training loss of every step so far, and the report when done.
The status is also written to the run folder (``status.json``) and to the
log's database, so a run started by another process, another replica or
before a restart can still be looked up. One run at a time among every
process sharing the log (a lock in its database): training takes the whole
machine, and a deploy must not race another.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from contextlib import ExitStack
from typing import Any

from adapters.registry import Registry
from conversations.log import ConversationLog
from conversations.runs import ACTIVE_STATES, RunRecords
from core.errors import LockedError, NotFoundError, SwitchboardError
from core.files import write_json_atomic
from core.settings import Settings
from engine.threads import use_all
from training.finetune import Progress
from training.request import TrainRequest, parse_request
from training.train import new_run_id, run_outcome, train_adapter

log = logging.getLogger(__name__)

STATES = ("queued", "running", "succeeded", "rejected", "failed", "cancelled")  # rejected: the gate said no
LOCK = "training"


class RunManager:
    def __init__(self, settings: Settings, registry: Registry, log: ConversationLog) -> None:
        self.settings = settings
        self.registry = registry
        self.log = log
        self.records = RunRecords(log.database)
        self._lock = threading.Lock()
        self._held: dict[str, ExitStack] = {}  # run id -> the database lock its run holds
        self._runs: dict[str, dict[str, Any]] = {}
        self._stops: dict[str, threading.Event] = {}
        self._threads: dict[str, threading.Thread] = {}

    def start(self, request: TrainRequest | dict[str, Any]) -> str:
        """Start a run in the background and return its id; refuses while another run is active, here or on
        another replica sharing the log."""
        if not isinstance(request, TrainRequest):
            request = parse_request(request)
        with self._lock:
            if any(s["state"] in ACTIVE_STATES for s in self._runs.values()):
                raise LockedError("a training run is already in progress; wait for it to finish")
            held = self._take_lock()
            run_id = new_run_id()
            self._held[run_id] = held
            self._runs[run_id] = {
                "run_id": run_id,
                "adapter": request.adapter,
                "state": "queued",
                "phase": None,
                "progress": None,
                "losses": [],
                "report": None,
                "error": None,
                "outcome": None,
                "started_at": time.time(),
                "finished_at": None,
            }
            self._stops[run_id] = threading.Event()
            thread = threading.Thread(target=self._work, args=(run_id, request), name=f"train-{run_id}", daemon=True)
            self._threads[run_id] = thread
        self._save(run_id)
        thread.start()
        return run_id

    def _take_lock(self) -> ExitStack:
        """The database's training lock, held until the run ends (closing the stack frees it); refused while
        another replica trains."""
        held = ExitStack()
        try:
            held.enter_context(self.log.database.lock(LOCK))
        except LockedError:
            others = self.records.active()
            running = f" (run {others[0]['run_id']} for {others[0]['adapter']!r})" if others else ""
            raise LockedError(
                f"a training run is already in progress on another replica{running}; wait for it to finish"
            ) from None
        return held

    def status(self, run_id: str) -> dict[str, Any]:
        with self._lock:
            if run_id in self._runs:
                return json.loads(json.dumps(self._runs[run_id], default=str))
        if "/" in run_id or run_id.startswith("."):
            raise NotFoundError(f"no training run {run_id!r}")
        recorded = self.records.get(run_id)  # started by another replica, or before a restart
        if recorded is not None:
            return recorded
        path = self.settings.runs_dir / run_id / "status.json"
        if not path.is_file():
            raise NotFoundError(f"no training run {run_id!r}")
        return json.loads(path.read_text(encoding="utf-8"))

    def active(self) -> dict[str, Any] | None:
        """The run in progress anywhere among the processes sharing the log, or None.

        A run recorded as active while nobody holds the lock lost its process
        (killed, or the machine went down): it is recorded as failed, once.
        """
        with self._lock:
            for status in self._runs.values():
                if status["state"] in ACTIVE_STATES:
                    return json.loads(json.dumps(status, default=str))
        recorded = self.records.active()
        if not recorded:
            return None
        try:
            with self.log.database.lock(LOCK):
                for status in recorded:
                    status.update(state="failed", error="the process running it stopped", finished_at=time.time())
                    self.records.save(status)
        except LockedError:
            return recorded[0]
        return None

    def cancel(self, run_id: str) -> None:
        """Ask a run to stop after its current step; it ends 'cancelled' and installs nothing."""
        if run_id not in self._stops:
            raise NotFoundError(f"no training run {run_id!r} in this process")
        self._stops[run_id].set()

    def wait(self, run_id: str, timeout: float | None = None) -> dict[str, Any]:
        thread = self._threads.get(run_id)
        if thread is not None:
            thread.join(timeout)
        return self.status(run_id)

    def _update(self, run_id: str, **changes: Any) -> None:
        with self._lock:
            self._runs[run_id].update(changes)
        self._save(run_id)

    def _save(self, run_id: str) -> None:
        folder = self.settings.runs_dir / run_id
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            snapshot = json.loads(json.dumps(self._runs[run_id], default=str))
        write_json_atomic(folder / "status.json", snapshot)
        try:
            self.records.save(snapshot)
        except SwitchboardError as exc:  # the run goes on; other replicas see it again with the next change
            log.warning("training run %s: its status could not be recorded in the database: %s", run_id, exc)

    def _on_progress(self, run_id: str, phase: str, progress: Progress | None) -> None:
        changes: dict[str, Any] = {"phase": phase}
        if progress is not None:
            changes["progress"] = {
                "step": progress.step,
                "total": progress.total,
                "eta_s": None if progress.eta_s is None else round(progress.eta_s, 1),
                "loss": progress.loss,
                "eval_loss": progress.eval_loss,
            }
            changes["losses"] = self._losses(run_id, progress)
        self._update(run_id, **changes)

    def _losses(self, run_id: str, progress: Progress) -> list[dict[str, Any]]:
        """The training loss of every step so far, so a client polling now and then can still plot the whole curve.

        A step reported twice (again when an evaluation adds a held-out loss) keeps one point.
        """
        with self._lock:
            points = [p for p in self._runs[run_id]["losses"] if p["step"] != progress.step]
        if progress.loss is None:
            return points
        return [*points, {"step": progress.step, "loss": progress.loss}]

    def _work(self, run_id: str, request: TrainRequest) -> None:
        try:
            self._train(run_id, request)
        finally:
            self._held.pop(run_id).close()

    def _train(self, run_id: str, request: TrainRequest) -> None:
        use_all()  # a serving process keeps its other threads to one core (engine.threads); training takes them all
        self._update(run_id, state="running")
        stop = self._stops[run_id]
        try:
            report = train_adapter(
                request,
                settings=self.settings,
                registry=self.registry,
                log=self.log,
                run_id=run_id,
                on_progress=lambda phase, p: self._on_progress(run_id, phase, p),
                should_stop=stop.is_set,
            )
        except SwitchboardError as exc:
            state = "cancelled" if stop.is_set() else "failed"
            self._update(run_id, state=state, error=str(exc), report=_read_report(self.settings, run_id), finished_at=time.time())
        except Exception as exc:  # a background thread has no one else to tell
            self._update(run_id, state="failed", error=f"{type(exc).__name__}: {exc}", report=_read_report(self.settings, run_id), finished_at=time.time())
        else:
            state = "succeeded" if report.get("installed") else "rejected"
            self._update(run_id, state=state, outcome=run_outcome(report), report=report, finished_at=time.time())


def _read_report(settings: Settings, run_id: str) -> dict[str, Any] | None:
    path = settings.runs_dir / run_id / "report.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
