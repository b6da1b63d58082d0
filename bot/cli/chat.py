"""``switchboard chat``: one answer from the command line, through the same pipeline as the server."""

from __future__ import annotations

import sys

import typer

from bot.cli.output import HOME_OPTION, JSON_OPTION, emit, settings_from
from bot.parts import Parts


def register(app: typer.Typer) -> None:
    app.command()(chat)


def chat(
    message: str = typer.Argument(..., help="The question to answer."),
    adapter: str = typer.Option("auto", "--adapter", help="Adapter name, 'auto' to route, or 'base' for no adapter."),
    conversation: str = typer.Option(None, "--conversation", help="Continue this conversation (its conversation_id)."),
    max_tokens: int = typer.Option(None, "--max-tokens", min=1, help="Tokens generated at most."),
    as_json: bool = JSON_OPTION,
    home: str = HOME_OPTION,
) -> None:
    """Answer one message (routed, grounded and logged) and print it; --json adds adapter, sources, ids and the
    feedback_token that makes a rating of this answer over HTTP trusted."""
    from bot.turn import TurnRequest
    from engine.threads import reserve_for_workers

    reserve_for_workers()  # the pipeline decodes in the scheduler's thread, on every core
    parts = Parts(settings_from(home), read_only_knowledge=True)
    pipeline = parts.pipeline
    request = TurnRequest(message, adapter, conversation, options={"max_new_tokens": max_tokens})
    stream = None if as_json else (lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
    result = pipeline.answer(request, on_text=stream)
    if as_json:
        emit({**result.to_dict(), "feedback_token": parts.log.feedback_token(result.message_id)}, True)
        return
    sys.stdout.write("\n")
    who = f"{result.adapter} v{result.adapter_version}" if result.adapter else "base model"
    print(f"-- {who}; sources: {len(result.sources)}; conversation {result.conversation_id}", file=sys.stderr)
    for source in result.sources:
        print(f"   [{source['number']}] {source['source']} {source['section']}".rstrip(), file=sys.stderr)
