"""Training runs in the background, for the admin API and the UI.

``RunManager.start`` validates the request, answers with a run id at once and
trains in a thread; ``status`` reports the state, the phase, step/total with
an ETA, the training loss of every step so far, and the report when done.
The status is also written to the run folder (``status.json``) and to the
log's database (``training_runs``), so a run started by another process, or
before a restart, can still be looked up, by every replica when they share a
PostgreSQL database. One run at a time across every process sharing the log:
training takes the whole machine, and ``start`` takes the log's ``training``
lock (a PostgreSQL advisory lock, or a file lock beside the SQLite file) for the
run's lifetime, released when the run ends or its process dies.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from adapters.registry import Registry
from conversations.database import Held
from conversations.log import ConversationLog
from core.errors import LockedError, NotFoundError, SwitchboardError, UnavailableError
from core.files import write_json_atomic
from core.settings import Settings
from engine.threads import use_all
from training.finetune import Progress
from training.request import TrainRequest, parse_request
from training.train import new_run_id, run_outcome, train_adapter

logger = logging.getLogger(__name__)
STATES = ("queued", "running", "succeeded", "rejected", "failed", "cancelled")  # rejected: the gate said no


class RunManager:
    def __init__(self, settings: Settings, registry: Registry, log: ConversationLog) -> None:
        self.settings = settings
        self.registry = registry
        self.log = log
        self._lock = threading.Lock()
        self._runs: dict[str, dict[str, Any]] = {}
        self._stops: dict[str, threading.Event] = {}
        self._threads: dict[str, threading.Thread] = {}

    def start(self, request: TrainRequest | dict[str, Any]) -> str:
        """Start a run in the background and return its id; refuses while a run is active here or in any
        other process sharing the log."""
        if not isinstance(request, TrainRequest):
            request = parse_request(request)
        with self._lock:
            if any(s["state"] in ("queued", "running") for s in self._runs.values()):
                raise LockedError("a training run is already in progress; wait for it to finish")
            held = self.log.try_lock("training")
            if held is None:
                raise LockedError(
                    "a training run is in progress elsewhere (another process sharing the conversation log); "
                    "wait for it to finish"
                )
            run_id = new_run_id()
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
            thread = threading.Thread(
                target=self._work, args=(run_id, request, held), name=f"train-{run_id}", daemon=True
            )
            self._threads[run_id] = thread
        self._save(run_id)
        thread.start()
        return run_id

    def status(self, run_id: str) -> dict[str, Any]:
        """A run's status: this process's own runs, then runs recorded in the log's database (by any
        process), then the status.json of runs from before the database recorded them."""
        with self._lock:
            if run_id in self._runs:
                return json.loads(json.dumps(self._runs[run_id], default=str))
        recorded = self.log.run_status(run_id)
        if recorded is not None:
            return recorded
        path = self.settings.runs_dir / run_id / "status.json"
        if "/" in run_id or run_id.startswith(".") or not path.is_file():
            raise NotFoundError(f"no training run {run_id!r}")
        return json.loads(path.read_text(encoding="utf-8"))

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
            self.log.record_run(run_id, snapshot)
        except UnavailableError as exc:  # status.json has it; the next save records the run again
            logger.warning("training run %s: status not recorded in the database: %s", run_id, exc)

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

    def _work(self, run_id: str, request: TrainRequest, held: Held) -> None:
        """Train, then free the training lock before the final status, so whoever sees the run end may start
        the next one at once."""
        try:
            ending = self._train(run_id, request)
        finally:
            held.release()
        self._update(run_id, **ending, finished_at=time.time())

    def _train(self, run_id: str, request: TrainRequest) -> dict[str, Any]:
        """Run the training; returns the run's final state and what goes with it."""
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
            return dict(state=state, error=str(exc), report=_read_report(self.settings, run_id))
        except Exception as exc:  # a background thread has no one else to tell
            return dict(state="failed", error=f"{type(exc).__name__}: {exc}", report=_read_report(self.settings, run_id))
        state = "succeeded" if report.get("installed") else "rejected"
        return dict(state=state, outcome=run_outcome(report), report=report)


def _read_report(settings: Settings, run_id: str) -> dict[str, Any] | None:
    path = settings.runs_dir / run_id / "report.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
