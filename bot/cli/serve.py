"""``switchboard serve``: the UI at / and the API at /v1 on one port."""

from __future__ import annotations

import typer

from bot.cli.output import HOME_OPTION, settings_from


def register(app: typer.Typer) -> None:
    app.command()(serve)


def serve(
    host: str = typer.Option(None, "--host", help="Interface to bind (default server.host, 127.0.0.1)."),
    port: int = typer.Option(None, "--port", min=1, max=65535, help="Port (default server.port, 7860)."),
    home: str = HOME_OPTION,
) -> None:
    """Serve the chat UI and the OpenAI-compatible API until interrupted; the models load once at start."""
    from bot.api.server import serve as run_server

    run_server(settings_from(home), host=host, port=port)
