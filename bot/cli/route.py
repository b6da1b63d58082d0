"""``switchboard route``: which adapter would answer a message; calibrate the threshold on a labelled file."""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

import typer

from bot.cli.output import HOME_OPTION, JSON_OPTION, emit, settings_from, table
from bot.parts import Parts
from bot.router import check_message
from core.errors import ConfigError, InvalidRequestError
from core.files import write_text_atomic
from core.settings import ENV_PREFIX, Settings

THRESHOLD_ENV = f"{ENV_PREFIX}ROUTER__THRESHOLD"


def register(app: typer.Typer) -> None:
    app.command()(route)


def route(
    message: str = typer.Argument(None, help="The message to route."),
    previous: str = typer.Option(
        None, "--previous", help="Adapter of the previous turn; short follow-ups stay with it."
    ),
    eval_file: Path = typer.Option(
        None,
        "--eval",
        help='Labelled JSONL, lines {"text", "adapter"} (adapter null for the base): prints accuracy, '
        "per-adapter precision and recall, the confusion matrix and the best threshold.",
    ),
    set_threshold: bool = typer.Option(
        False, "--set-threshold", help="With --eval: store the best threshold in $SWITCHBOARD_HOME/switchboard.toml."
    ),
    as_json: bool = JSON_OPTION,
    home: str = HOME_OPTION,
) -> None:
    """Show which adapter a message goes to (null: the base model), how sure the router is, every score, and how
    well each adapter's documents answer the message (strong retrieval routes on its own)."""
    if eval_file is None and set_threshold:
        raise InvalidRequestError("--set-threshold needs --eval FILE: it stores the threshold found on that file")
    if message is None and eval_file is None:
        raise InvalidRequestError("give a MESSAGE to route, or --eval FILE to calibrate")
    if message is not None and eval_file is not None:
        raise InvalidRequestError("give a MESSAGE or --eval FILE, not both")
    if eval_file is not None and previous:
        raise InvalidRequestError("--previous applies to one message, not to --eval")
    if message is not None:
        check_message(message)  # before any model loads
    settings = settings_from(home)
    # Read-only, as `switchboard chat`: retrieval takes part in routing, and a running server holds the lock.
    parts = Parts(settings, read_only_knowledge=True)
    if eval_file is None:
        result = parts.dispatcher.route(message, previous=previous)
        emit(result.to_dict(), as_json, _route_text(result.to_dict()))
        return
    from bot.calibration import calibrate, read_labelled

    cases = read_labelled(eval_file, [m.name for m in parts.registry.list() if m.enabled])  # before any model loads
    report = calibrate(parts.router, cases, progress=True).to_dict()
    if set_threshold:
        report["stored"] = str(store_threshold(settings, report["best_threshold"]))
    emit(report, as_json, _report_text(report))


def _route_text(result: dict) -> str:
    chosen = result["adapter"] or "base model"
    lines = [f"{chosen}  (confidence {result['confidence']:.3f}, {result['reason']})"]
    retrieval = result.get("retrieval", {})
    for name, score in sorted(result["scores"].items(), key=lambda item: -item[1]):
        documents = f"  documents {retrieval[name]:.3f}" if name in retrieval else ""
        lines.append(f"  {name:<20} {score:.3f}{documents}")
    return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _report_text(report: dict) -> str:
    labels = list(report["confusion"])
    rows = [
        {"label": label, "precision": _ratio(m["precision"]), "recall": _ratio(m["recall"]), "support": m["support"]}
        for label, m in report["per_adapter"].items()
    ]
    matrix = [{"true \\ predicted": label, **report["confusion"][label]} for label in labels]
    lines = [
        f"{report['count']} labelled messages",
        f"accuracy {report['accuracy']:.3f} at the current threshold {report['threshold']:.3f}",
        "",
        table(rows, ["label", "precision", "recall", "support"]),
        "",
        table(matrix, ["true \\ predicted", *labels]),
        "",
        f"best threshold {report['best_threshold']:.3f} (accuracy {report['best_accuracy']:.3f})",
    ]
    if "stored" in report:
        lines.append(f"stored in {report['stored']}")
    return "\n".join(lines)


def store_threshold(settings: Settings, threshold: float) -> Path:
    """Write [router] threshold into the home's switchboard.toml, keeping its other settings and comments."""
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    path = settings.home / "switchboard.toml"
    try:
        document = tomlkit.parse(path.read_text(encoding="utf-8")) if path.is_file() else tomlkit.document()
        section = document.setdefault("router", tomlkit.table())
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: 'router' is not a table; fix the file and retry")
        section["threshold"] = threshold
        text = tomlkit.dumps(document)
        if tomllib.loads(text)["router"]["threshold"] != threshold:
            raise ConfigError(f"{path}: the threshold did not read back; edit [router] by hand")
    except (OSError, UnicodeDecodeError, TOMLKitError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot update the settings file ({exc})") from exc
    write_text_atomic(path, text)
    if os.environ.get(THRESHOLD_ENV):
        print(f"note: {THRESHOLD_ENV} is set and overrides the stored threshold", file=sys.stderr)
    return path
