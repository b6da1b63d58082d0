"""``switchboard chat``: one answer from the command line."""

from __future__ import annotations

import sys

import typer

from bot.cli.output import HOME_OPTION, JSON_OPTION, emit, settings_from
from bot.runtime import Runtime


def register(app: typer.Typer) -> None:
    app.command()(chat)


def chat(
    message: str = typer.Argument(..., help="The question to answer."),
    adapter: str = typer.Option("auto", "--adapter", help="Adapter name, 'auto' to route, or 'base' for no adapter."),
    max_tokens: int = typer.Option(None, "--max-tokens", help="Tokens generated at most."),
    as_json: bool = JSON_OPTION,
    home: str = HOME_OPTION,
) -> None:
    """Answer one message and print the answer (with --json: adapter, sources and ids too)."""
    runtime = Runtime(settings_from(home))
    manifest = None if adapter in ("auto", "base") else runtime.enabled_adapter(adapter)
    engine = runtime.engine
    key = engine.ensure(manifest)
    options = engine.default_options(max_new_tokens=max_tokens)
    messages = [{"role": "system", "content": manifest.system_prompt}] if manifest and manifest.system_prompt else []
    messages.append({"role": "user", "content": message})
    stream = None if as_json else (lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
    result = engine.generate(messages, key, options, on_text=stream)
    if as_json:
        emit(
            {
                "answer": result.text,
                "adapter": manifest.name if manifest else None,
                "adapter_version": manifest.version if manifest else None,
                "confidence": None,
                "sources": [],
                "conversation_id": None,
                "message_id": None,
            },
            True,
        )
    else:
        sys.stdout.write("\n")
