"""One training run, start to finish: dataset → fine-tune → evaluate → gate → install.

This is training's public entry point; the CLI, the HTTP admin API and the UI
all start runs through :func:`train_adapter` (directly or via
:class:`bot.training_runs.RunManager`). Everything a run produces stays in its run
folder until the gate passes; the registry install is the last step and is
atomic, so a run that fails or is killed at any point leaves the registry as
it was.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from adapters.registry import Registry
from conversations.log import ConversationLog
from core.errors import LockedError, NotFoundError
from core.files import write_json_atomic
from core.settings import Settings
from training.dataset import REGRESSION_FILE, ChatDataset, DatasetOptions, LogFilters, build_dataset
from training.finetune import Progress, TrainingError, finetune
from training.formats import read_chats
from training.recipe import Recipe
from training.request import TrainRequest

ROUTING_EXAMPLES = 20
PHASES = ("dataset", "training", "evaluating", "installing", "done")


def run_outcome(report: dict[str, Any]) -> str:
    """One line on what a finished run changed: deployed, or rejected by the gate with its reasons."""
    installed = report.get("installed")
    if installed:
        forced = " (forced past the gate)" if report.get("gate", {}).get("forced") else ""
        return f"deployed as {installed['name']} v{installed['version']}{forced}"
    reasons = "; ".join(r for r in report.get("gate", {}).get("reasons", []))
    return f"rejected by the gate, not deployed: {reasons}" if reasons else "not deployed: nothing changed"


def new_run_id() -> str:
    return f"{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


PhaseFn = Callable[[str, Progress | None], None]


def train_adapter(
    request: TrainRequest,
    *,
    settings: Settings,
    registry: Registry,
    log: ConversationLog | None = None,
    run_id: str | None = None,
    on_progress: PhaseFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Run one training and return its report; installs the candidate only when the gate lets it through.

    ``log`` is read when the request trains from the conversation log.
    """
    settings.runs_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(settings.runs_dir / ".training.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise LockedError("another training run is in progress in this home; wait for it to finish") from None
    run_id = run_id or new_run_id()
    run_dir = settings.runs_dir / run_id
    run_dir.mkdir(exist_ok=True)
    started = time.perf_counter()
    report: dict[str, Any] = {"run_id": run_id, "adapter": request.adapter, "request": request.model_dump(), "run_dir": str(run_dir)}

    def phase(name: str, progress: Progress | None = None) -> None:
        if on_progress is not None:
            on_progress(name, progress)

    try:
        live = _live(registry, request.adapter)

        phase("dataset")
        system_prompt = _system_prompt(live, request)
        dataset = _build(settings, log, request, system_prompt)
        dataset.write(run_dir / "dataset")
        report["dataset"] = dataset.card.to_dict()
        golden = None
        if request.golden:
            from training.evaluate import read_golden

            golden = read_golden(Path(request.golden))  # fail before training, not after

        phase("training")
        recipe = Recipe.from_defaults(settings.training, **request.overrides(Recipe))
        result = finetune(
            settings,
            dataset.train,
            run_dir,
            recipe=recipe,
            held_out=dataset.held_out,
            progress=lambda p: phase("training", p),
            should_stop=should_stop,
        )
        report["training"] = result.to_dict()
        if result.cancelled:
            raise TrainingError("the run was cancelled; nothing was installed")

        phase("evaluating")
        evaluation = evaluate_candidate(settings, result.adapter_dir, live, dataset.held_out, golden, system_prompt)
        report["evaluation"] = evaluation
        from training.evaluate import LossReport
        from training.gate import decide

        decision = decide(
            {k: LossReport(**v) for k, v in evaluation["held_out"].items()},
            {k: LossReport(**v) for k, v in evaluation["regression"].items() if k != "rise"},
            settings.training.regression_margin,
            request.force,
        )
        report["gate"] = decision.to_dict()

        report["installed"] = None
        if decision.install:
            phase("installing")
            manifest = registry.install(
                result.adapter_dir,
                request.adapter,
                **_manifest_fields(live, request, dataset.questions),
                metrics=_metrics(evaluation),
                provenance={
                    "source": "training",
                    "run_id": run_id,
                    "dataset_hash": dataset.card.content_hash,
                    "forced": decision.forced,
                    "gate": decision.reasons,
                },
            )
            report["installed"] = {"name": manifest.name, "version": manifest.version}
        report["seconds"] = round(time.perf_counter() - started, 1)
        phase("done")
        return report
    except BaseException as exc:
        report["error"] = str(exc) or type(exc).__name__
        raise
    finally:
        write_json_atomic(run_dir / "report.json", report)
        lock.release()


def preview_dataset(
    request: TrainRequest, *, settings: Settings, registry: Registry, log: ConversationLog | None = None
) -> dict[str, Any]:
    """The dataset card a run of ``request`` would train on (counts, dropped, scrubbed), built without training.

    Operators check their filters with it before spending minutes of training;
    it builds the dataset exactly as a run does, so the counts are the run's.
    """
    return _build(settings, log, request, _system_prompt(_live(registry, request.adapter), request)).card.to_dict()


def _system_prompt(live, request: TrainRequest) -> str | None:
    """A new version trains with the prompt the live version serves; a new adapter with the request's."""
    return live.system_prompt if live and live.system_prompt else request.system_prompt


def _build(settings: Settings, log: ConversationLog | None, request: TrainRequest, system_prompt: str | None) -> ChatDataset:
    """The request's log filters and preparation options applied to the log and its data files."""
    options = DatasetOptions.from_defaults(
        settings.training, **{**request.overrides(DatasetOptions), "system_prompt": system_prompt}
    )
    logged = None if request.log_adapter == "any" else (request.log_adapter or request.adapter)
    filters = LogFilters(**{**request.overrides(LogFilters), "adapter": logged})  # its adapter: whose turns, not which is trained
    if request.from_logs and log is None:
        raise ValueError("a request that trains from the conversation log needs the log")
    return build_dataset(
        log=log if request.from_logs else None,
        filters=filters if request.from_logs else None,
        files=[Path(p) for p in request.data],
        options=options,
    )


def _live(registry: Registry, name: str):
    try:
        return registry.get(name)
    except NotFoundError:
        return None


def _manifest_fields(live, request: TrainRequest, questions: list[str]) -> dict[str, Any]:
    """A new version keeps what operators set on the live one; a new adapter gets the request's fields."""
    if live is not None:
        return {
            "description": live.description,
            "examples": live.examples,
            "keywords": live.keywords,
            "collections": live.collections,
            "system_prompt": live.system_prompt,
            "no_answer": live.no_answer,
            "generation": live.generation,
        }
    return {
        "description": request.description or f"Trained from {'the conversation log' if request.from_logs else 'data files'}",
        "examples": request.examples if request.examples is not None else questions[:ROUTING_EXAMPLES],
        "system_prompt": request.system_prompt,
    }


def _metrics(evaluation: dict[str, Any]) -> dict[str, Any]:
    metrics = {
        "held_out_loss": evaluation["held_out"]["candidate"]["loss"],
        "held_out_perplexity": evaluation["held_out"]["candidate"]["perplexity"],
        "general_perplexity": evaluation["regression"]["candidate"]["perplexity"],
        "general_perplexity_rise": evaluation["regression"]["rise"],
    }
    if evaluation.get("golden"):
        metrics["golden_pass_rate"] = evaluation["golden"]["candidate"]["pass_rate"]
    return metrics


def regression_chats(system_prompt: str | None) -> list[list[dict]]:
    """The general English and Chinese chats of the forgetting guard, with the adapter's system prompt."""
    from collections import Counter

    from training.dataset import with_system

    return [with_system(chat, system_prompt) for _, chat in read_chats(REGRESSION_FILE, Counter())]


def evaluate_candidate(settings, candidate: Path | None, live, held_out, golden, system_prompt: str | None) -> dict[str, Any]:
    """Held-out loss for base, live and candidate; regression perplexity; golden set for candidate and live."""
    from dataclasses import asdict

    from training.evaluate import BASE, CANDIDATE, LIVE, Evaluator

    evaluator = Evaluator(settings, candidate=candidate, live=Path(live.path) if live else None)
    subject = CANDIDATE if candidate else LIVE
    evaluation: dict[str, Any] = {"held_out": {}, "regression": {}}
    if held_out:
        for variant in evaluator.variants:
            evaluation["held_out"][variant] = asdict(evaluator.loss(held_out, variant))
    general = regression_chats(system_prompt)
    for variant in (BASE, subject):
        evaluation["regression"][variant] = asdict(evaluator.loss(general, variant))
    base_ppl = evaluation["regression"][BASE]["perplexity"]
    evaluation["regression"]["rise"] = round(evaluation["regression"][subject]["perplexity"] / base_ppl - 1, 4)
    if golden:
        evaluation["golden"] = {v: evaluator.golden(golden, v, system_prompt).to_dict() for v in evaluator.variants}
    return evaluation


def evaluate_adapter(
    name: str, *, settings: Settings, registry: Registry, golden: Path | None = None, data: Path | None = None
) -> dict[str, Any]:
    """The evaluation report of an installed adapter's current version against the base.

    Held-out chats come from ``data`` or, for a trained adapter, from the
    held-out split of the run that produced it.
    """
    from collections import Counter

    from core.errors import InvalidRequestError
    from training.evaluate import read_golden

    manifest = registry.get(name)
    held_out_file = data
    run_id = manifest.provenance.get("run_id")
    if held_out_file is None and run_id:
        candidate = settings.runs_dir / run_id / "dataset" / "held_out.jsonl"
        held_out_file = candidate if candidate.is_file() else None
    held_out = []
    if held_out_file is not None:
        dropped: Counter = Counter()
        held_out = [chat for _, chat in read_chats(Path(held_out_file), dropped)]
        if not held_out:
            raise InvalidRequestError(f"{held_out_file}: no usable chats")
    cases = read_golden(golden) if golden else None
    evaluation = evaluate_candidate(settings, None, manifest, held_out, cases, manifest.system_prompt or None)
    return {
        "adapter": manifest.name,
        "version": manifest.version,
        "held_out_source": str(held_out_file) if held_out_file else None,
        **evaluation,
    }
