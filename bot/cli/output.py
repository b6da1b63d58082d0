"""How commands print: one JSON document with --json, a readable table or text otherwise."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from core.settings import Settings, load_settings

JSON_OPTION = typer.Option(False, "--json", help="Print exactly one JSON document on stdout.")
HOME_OPTION = typer.Option(None, "--home", help="Data folder (default $SWITCHBOARD_HOME or ./data).")


def settings_from(home: str | None = None, **flags: Any) -> Settings:
    return load_settings({"home": home, **flags})


def emit(data: Any, as_json: bool, text: str | None = None) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")
    else:
        typer.echo(text if text is not None else json.dumps(data, ensure_ascii=False, indent=2, default=str))


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)
