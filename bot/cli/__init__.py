"""The ``switchboard`` command line.

Each command group lives in its own module and is registered here. Library
errors become one line on stderr and a non-zero exit only here, at the edge.
"""

from __future__ import annotations

import sys

import typer

from core.errors import SwitchboardError

app = typer.Typer(
    name="switchboard",
    help="Switchboard: many LoRA assistants on one shared 4-bit base model, grounded in your documents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    from bot.cli import adapters, bootstrap, chat, export, kb, route, serve

    app.add_typer(adapters.app, name="adapters")
    chat.register(app)
    app.add_typer(kb.app, name="kb")
    route.register(app)
    serve.register(app)
    bootstrap.register(app)
    export.register(app)
    from bot.cli import train  # conversation log export, training and evaluation
    train.register(app)


def main() -> None:
    _register()
    try:
        code = app(standalone_mode=False)  # returns typer.Exit's code instead of raising it
        sys.exit(code or 0)
    except SwitchboardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # usage errors (a bad option value, a missing argument): typer's own click
        exc.show()
        sys.exit(exc.exit_code)
