"""``switchboard train``, ``switchboard eval`` and ``switchboard logs`` (export, untrusted, accept).

Training itself lives in ``training``; these commands only parse flags, show
progress on stderr and print the report.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from bot.cli.output import HOME_OPTION, JSON_OPTION, emit, settings_from, table
from bot.parts import Parts
from core.errors import InvalidRequestError

logs_app = typer.Typer(help="The conversation log.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command("eval")(eval_)
    app.add_typer(logs_app, name="logs")


def _read_text(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"{path}: cannot read ({exc})") from exc


class _ProgressBar:
    """Phases as lines and training steps as a tqdm bar with ETA, all on stderr."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.phase: str | None = None
        self.bar = None

    def __call__(self, phase: str, progress) -> None:
        if not self.enabled:
            return
        if phase != self.phase:
            self.close()
            self.phase = phase
            if phase != "done":
                print(f"[{phase}]", file=sys.stderr, flush=True)
        if progress is not None:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=progress.total, desc="training", unit="step", file=sys.stderr, leave=False)
            self.bar.n = progress.step
            postfix = {"loss": f"{progress.loss:.3f}"} if progress.loss is not None else {}
            if progress.eval_loss is not None:
                postfix["held-out"] = f"{progress.eval_loss:.3f}"
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _summary(report: dict) -> str:
    from training.train import run_outcome

    lines = [f"run {report['run_id']} ({report['run_dir']})"]
    card = report.get("dataset", {})
    if card:
        counts = card["counts"]
        lines.append(
            f"data: {counts['train']} training, {counts['held_out']} held out, {counts['replay']} replayed;"
            f" dropped {sum(card['dropped'].values())}, scrubbed {sum(card['scrubbed'].values())}"
        )
        lines += [f"warning: {warning}" for warning in card.get("warnings", [])]
    training = report.get("training")
    if training:
        lines.append(f"trained {training['steps']} steps in {training['seconds']:.0f}s ({training['tokens_per_s']:.0f} tokens/s)")
    for reason in report.get("gate", {}).get("reasons", []):
        lines.append(f"gate: {reason}")
    lines.append(run_outcome(report))
    return "\n".join(lines)


def train(
    adapter: str = typer.Option(..., "--adapter", help="Adapter to train; a new name creates it."),
    from_logs: bool = typer.Option(False, "--from-logs", help="Train on rated and corrected turns of the conversation log."),
    data: list[Path] = typer.Option(None, "--data", help="JSONL chats (OpenAI, Alpaca or ShareGPT); repeatable."),
    log_adapter: str = typer.Option(
        None, "--log-adapter", help="Logged turns of which adapter: default the one trained, 'base', or 'any'."
    ),
    rating: str = typer.Option("up", "--rating", help="Latest rating of logged turns: up, down or any."),
    since: str = typer.Option(None, "--since", help="Logged turns from this ISO date on."),
    until: str = typer.Option(None, "--until", help="Logged turns before this ISO date."),
    no_sources: bool = typer.Option(False, "--no-sources", help="Train without the retrieved sources in the prompt."),
    max_steps: int = typer.Option(None, "--max-steps", min=1, help="Optimizer steps."),
    rank: int = typer.Option(None, "--rank", min=1, help="LoRA rank."),
    learning_rate: float = typer.Option(None, "--learning-rate", help="Peak learning rate."),
    golden: Path = typer.Option(None, "--golden", help="Golden set JSONL to score the candidate on."),
    force: bool = typer.Option(False, "--force", help="Install even if the gate fails (recorded in the manifest)."),
    description: str = typer.Option(None, "--description", help="Description of a new adapter."),
    system_prompt: Path = typer.Option(None, "--system-prompt", help="File with the system prompt of a new adapter."),
    as_json: bool = JSON_OPTION,
    home: str = HOME_OPTION,
) -> None:
    """Train a candidate, evaluate it, and install it as the next version if it passes the gate."""
    from training.train import parse_request, train_adapter

    request = parse_request(
        dict(
            adapter=adapter,
            from_logs=from_logs,
            data=[str(p) for p in data or []],
            log_adapter=log_adapter,
            rating=rating,
            since=since,
            until=until,
            include_sources=not no_sources,
            max_steps=max_steps,
            rank=rank,
            learning_rate=learning_rate,
            golden=str(golden) if golden else None,
            force=force,
            description=description,
            system_prompt=_read_text(system_prompt),
        )
    )
    bar = _ProgressBar()
    try:
        parts = Parts(settings_from(home))
        report = train_adapter(request, settings=parts.settings, registry=parts.registry, log=parts.log, on_progress=bar)
    finally:
        bar.close()
    emit(report, as_json, _summary(report))


def eval_(
    adapter: str = typer.Option(..., "--adapter", help="Installed adapter to evaluate (its current version)."),
    golden: Path = typer.Option(None, "--golden", help="Golden set JSONL."),
    data: Path = typer.Option(None, "--data", help="Held-out chats JSONL (default: the held-out set of its training run)."),
    as_json: bool = JSON_OPTION,
    home: str = HOME_OPTION,
) -> None:
    """Print the evaluation report of an installed adapter: held-out loss, general regression, golden set."""
    from training.train import evaluate_adapter

    parts = Parts(settings_from(home))
    parts.registry.get(adapter)  # an unknown name fails before anything loads
    print("[evaluating]", file=sys.stderr, flush=True)
    report = evaluate_adapter(adapter, settings=parts.settings, registry=parts.registry, golden=golden, data=data)
    emit(report, as_json)


@logs_app.command("export")
def export(
    adapter: str = typer.Option(None, "--adapter", help="Turns answered by this adapter ('base' for none)."),
    rating: str = typer.Option("any", "--rating", help="Latest rating: up, down or any."),
    since: str = typer.Option(None, "--since", help="Turns from this ISO date on."),
    until: str = typer.Option(None, "--until", help="Turns before this ISO date."),
    corrected_only: bool = typer.Option(False, "--corrected-only", help="Only turns with an operator correction."),
    no_sources: bool = typer.Option(False, "--no-sources", help="Leave the retrieved sources out of the prompts."),
    no_scrub: bool = typer.Option(False, "--no-scrub", help="Keep e-mail addresses, phone, card and ID numbers."),
    output: Path = typer.Option(None, "--output", "-o", help="Write JSONL here instead of stdout."),
    as_json: bool = JSON_OPTION,
    home: str = HOME_OPTION,
) -> None:
    """Logged turns as chat-format JSONL ({"messages": [...], "metadata": {...}}), as served, scrubbed by default."""
    from training.export import export_turns

    if rating not in ("up", "down", "any"):
        raise InvalidRequestError("--rating must be up, down or any")
    parts = Parts(settings_from(home))
    records = export_turns(
        parts.log,
        adapter=adapter,
        rating=None if rating == "any" else rating,
        since=since,
        until=until,
        corrected_only=corrected_only,
        include_sources=not no_sources,
        scrub=not no_scrub,
    )
    if output is not None:
        count = 0
        with output.open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
        emit({"path": str(output), "turns": count}, as_json, f"wrote {count} turns to {output}")
    elif as_json:
        emit(list(records), True)
    else:
        for record in records:
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")


@logs_app.command("untrusted")
def untrusted(as_json: bool = JSON_OPTION, home: str = HOME_OPTION) -> None:
    """Feedback sent without its answer's feedback token: training ignores it until accepted."""
    rows = Parts(settings_from(home)).log.untrusted_feedback()
    emit(rows, as_json, table(rows, ["message_id", "rating", "correction", "created_at"]))


@logs_app.command("accept")
def accept(
    message_id: str = typer.Argument(..., help="The answer whose untrusted feedback training may use."),
    as_json: bool = JSON_OPTION,
    home: str = HOME_OPTION,
) -> None:
    """Trust the feedback on one answer after reading it (see `switchboard logs untrusted`)."""
    accepted = Parts(settings_from(home)).log.accept_feedback(message_id)
    emit({"message_id": message_id, "accepted": accepted}, as_json, f"accepted {accepted} feedback entries on {message_id}")
