"""``switchboard adapters``: the registry from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from bot.cli.output import HOME_OPTION, JSON_OPTION, emit, settings_from, table
from bot.parts import Parts
from core.errors import InvalidAdapterError

app = typer.Typer(help="Install, inspect and manage LoRA adapters.", no_args_is_help=True)

COLUMNS = ["name", "version", "status", "rank", "size_bytes", "description"]


def _parts(home: str | None) -> Parts:
    return Parts(settings_from(home))


def read_examples(path: Path) -> list[str]:
    """Routing examples from a .txt file (one per line), a JSON list, or JSONL lines of strings or {"text"}."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidAdapterError(f"{path}: cannot read examples ({exc})") from exc
    if path.suffix == ".json":
        data = json.loads(text)
        items = data.get("examples", []) if isinstance(data, dict) else data
    elif path.suffix == ".jsonl":
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        items = text.splitlines()
    examples = [(i.get("text", "") if isinstance(i, dict) else str(i)).strip() for i in items]
    return [e for e in examples if e]


@app.command("list")
def list_(as_json: bool = JSON_OPTION, home: str = HOME_OPTION) -> None:
    """List installed adapters with their current version and status."""
    rows = [m.summary() for m in _parts(home).registry.list()]
    emit(rows, as_json, table(rows, COLUMNS))


@app.command()
def add(
    path: Path = typer.Argument(..., help="PEFT LoRA folder with adapter_config.json and adapter_model.safetensors."),
    name: str = typer.Option(..., "--name", help="Registry name: a-z, 0-9, '_' and '-'."),
    description: str = typer.Option("", "--description", help="What the adapter is for."),
    examples: Path = typer.Option(None, "--examples", help="Routing examples: .txt (one per line), .json or .jsonl."),
    collections: str = typer.Option("", "--collections", help="Knowledge collections, comma-separated."),
    system_prompt: Path = typer.Option(None, "--system-prompt", help="File holding the adapter's system prompt."),
    as_json: bool = JSON_OPTION,
    home: str = HOME_OPTION,
) -> None:
    """Validate a PEFT LoRA folder and install it as the next version of NAME."""
    manifest = _parts(home).registry.install(
        path,
        name,
        description=description,
        examples=read_examples(examples) if examples else None,
        collections=[c.strip() for c in collections.split(",") if c.strip()],
        system_prompt=system_prompt.read_text(encoding="utf-8") if system_prompt else None,
        provenance={"source": "cli", "path": str(path.resolve())},
    )
    emit(manifest.summary(), as_json, f"installed {manifest.name} v{manifest.version}")


@app.command()
def show(name: str, as_json: bool = JSON_OPTION, home: str = HOME_OPTION) -> None:
    """Show the manifest of an adapter's current version and its other versions."""
    registry = _parts(home).registry
    data = registry.get(name).to_dict()
    data["versions"] = [m.version for m in registry.versions(name)]
    emit(data, as_json)


@app.command()
def remove(name: str, as_json: bool = JSON_OPTION, home: str = HOME_OPTION) -> None:
    """Remove an adapter and all its versions."""
    _parts(home).registry.remove(name)
    emit({"removed": name}, as_json, f"removed {name}")


@app.command()
def enable(name: str, as_json: bool = JSON_OPTION, home: str = HOME_OPTION) -> None:
    """Serve an adapter again."""
    emit(_parts(home).registry.set_status(name, "enabled").summary(), as_json, f"enabled {name}")


@app.command()
def disable(name: str, as_json: bool = JSON_OPTION, home: str = HOME_OPTION) -> None:
    """Stop serving an adapter (it stays installed; the router skips it)."""
    emit(_parts(home).registry.set_status(name, "disabled").summary(), as_json, f"disabled {name}")


@app.command()
def rollback(name: str, as_json: bool = JSON_OPTION, home: str = HOME_OPTION) -> None:
    """Serve the previous version of an adapter again."""
    manifest = _parts(home).registry.rollback(name)
    emit(manifest.summary(), as_json, f"{name} now serves v{manifest.version}")
