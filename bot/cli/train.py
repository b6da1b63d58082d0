"""``switchboard train``, ``switchboard eval`` and ``switchboard logs`` (export, untrusted, accept).

Training itself lives in ``training``; these commands only parse flags, show
progress on stderr and print the report. The options of ``switchboard train``
are built from the fields of :class:`training.request.TrainRequest`.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Literal, get_origin

import typer
from pydantic.fields import FieldInfo

from bot.cli.output import HOME_OPTION, JSON_OPTION, emit, settings_from, table
from bot.parts import Parts
from core.errors import InvalidRequestError
from training.request import Flag, bound, fields_with, parse_request, value_type

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


def _option(name: str, field: FieldInfo, flag: Flag) -> inspect.Parameter:
    """One ``switchboard train`` option, built from the request field it sets."""
    kind = value_type(field)
    if flag.path:
        kind = list[Path] if get_origin(kind) is list else Path
    elif get_origin(kind) is Literal:
        kind = str
    if field.is_required():
        default = ...
    elif kind is bool:
        default = False  # a switch: given or not
    else:
        default = None if field.default_factory else field.default
    bounds = {"min": bound(field, "ge"), "max": bound(field, "le")} if kind is int else {}
    bounds = {key: value for key, value in bounds.items() if value is not None}
    option = typer.Option(default, flag.name or f"--{name.replace('_', '-')}", help=flag.help, **bounds)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)


def _switches_off(field: FieldInfo) -> bool:
    """A field that is on unless told otherwise is offered as a switch that turns it off (--no-sources)."""
    return value_type(field) is bool and field.default is True


def _request(options: dict) -> dict:
    """The request fields the given options set; a switch such as --no-sources turns its field off."""
    fields = {}
    for name, (field, flag) in fields_with(Flag).items():
        value = options[name]
        if _switches_off(field):
            value = not value
        elif flag.read:
            value = _read_text(value)
        elif flag.path and value is not None:
            value = [str(p) for p in value] if isinstance(value, list) else str(value)
        if value is not None:
            fields[name] = value
    return fields


def train(*, as_json: bool, home: str | None, **options) -> None:
    """Train a candidate, evaluate it, and install it as the next version if it passes the gate."""
    from training.train import train_adapter

    request = parse_request(_request(options))
    bar = _ProgressBar()
    try:
        parts = Parts(settings_from(home))
        report = train_adapter(request, settings=parts.settings, registry=parts.registry, log=parts.log, on_progress=bar)
    finally:
        bar.close()
    emit(report, as_json, _summary(report))


train.__signature__ = inspect.Signature(  # the options of the request, then the ones every command has
    [
        *(_option(name, field, flag) for name, (field, flag) in fields_with(Flag).items()),
        inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, default=JSON_OPTION, annotation=bool),
        inspect.Parameter("home", inspect.Parameter.KEYWORD_ONLY, default=HOME_OPTION, annotation=str),
    ]
)


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
