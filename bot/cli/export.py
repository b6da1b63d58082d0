"""``switchboard export``: an adapter as a merged model, a GGUF file, an Ollama Modelfile or a PEFT folder."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from bot.cli.output import HOME_OPTION, JSON_OPTION, emit, settings_from
from bot.parts import Parts
from core.errors import InvalidRequestError
from training.artifacts.config import DTYPE_HELP, FORMAT_HELP, ExportConfig


def register(app: typer.Typer) -> None:
    app.command("export")(export)


def parse_adapter(text: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME@VERSION`` (``NAME@3`` or ``NAME@v3``)."""
    name, at, version = text.partition("@")
    if not at:
        return name, None
    digits = version.removeprefix("v")
    if not digits.isdigit():
        raise InvalidRequestError(f"{text!r}: write NAME or NAME@VERSION, the version a number such as 3")
    return name, int(digits)


class StepPrinter:
    """Progress on stderr: a line when the step changes, and every tenth of the way."""

    def __init__(self) -> None:
        self.last: tuple[str, int] | None = None

    def __call__(self, fraction: float, message: str) -> None:
        mark = (message, int(fraction * 10))
        if mark != self.last:
            self.last = mark
            print(f"[{fraction:4.0%}] {message}", file=sys.stderr, flush=True)


def export(
    adapter: str = typer.Argument(..., help="Installed adapter: NAME (its served version) or NAME@VERSION."),
    format: str = typer.Option(..., "--format", help=FORMAT_HELP),
    out: Path = typer.Option(..., "--out", help=ExportConfig.model_fields["out"].description),
    dtype: str = typer.Option(None, "--dtype", help=DTYPE_HELP),
    force: bool = typer.Option(False, "--force", help=ExportConfig.model_fields["force"].description),
    as_json: bool = JSON_OPTION,
    home: str = HOME_OPTION,
) -> None:
    """Write an adapter out for transformers, vLLM, llama.cpp or Ollama; prints the files with sizes and sha256."""
    from training.artifacts.builder import export_adapter
    from training.artifacts.config import export_config

    name, version = parse_adapter(adapter)
    config = export_config(format=format, out=out, dtype=dtype, force=force)
    parts = Parts(settings_from(home))
    result = export_adapter(parts.settings, parts.registry, name, config, version, progress=StepPrinter())
    emit(result, as_json, summary(result))


def summary(result: dict) -> str:
    lines = [f"exported {result['adapter']} v{result['version']} as {result['format']} to {result['out']}"]
    lines += [f"  {f['path']}  {f['bytes'] / 1e6:,.1f} MB  sha256 {f['sha256']}" for f in result["files"]]
    lines += ["run it with:", *(f"  {line}" for line in result["usage"])]
    return "\n".join(lines)
