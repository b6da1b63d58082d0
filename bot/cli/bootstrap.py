"""``switchboard bootstrap``: the first-run set-up behind ``make run``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from bot.cli.output import HOME_OPTION, JSON_OPTION, emit, settings_from


def register(app: typer.Typer) -> None:
    app.command()(bootstrap)


def bootstrap(
    demo: Path = typer.Option(None, "--demo", help="Folder of demo assistants (default: the repo's demo/)."),
    max_steps: int = typer.Option(None, "--max-steps", help="Training steps per demo adapter (default: the recipe in its manifest)."),
    as_json: bool = JSON_OPTION,
    home: str = HOME_OPTION,
) -> None:
    """Convert the base model, ingest the demo documents and train the demo adapters (cached after the first run)."""
    from bot.bootstrap import DEMO_DIR
    from bot.bootstrap import bootstrap as run_bootstrap
    from bot.cli.train import _ProgressBar
    from bot.parts import Parts
    from engine.base_model import resolve_base_model

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parts = Parts(settings_from(home))
    resolve_base_model(parts.settings)
    report = run_bootstrap(parts, demo or DEMO_DIR, max_steps, on_progress=_ProgressBar())
    lines = [f"knowledge '{c}': {r['documents']} documents, {r['chunks']} chunks" for c, r in report.ingested.items()]
    lines += [f"adapter '{n}': trained, installed={r['installed']}" for n, r in report.trained.items()]
    lines += [f"adapter '{n}': already installed" for n in report.skipped]
    emit(report.to_dict(), as_json, "\n".join(lines))
