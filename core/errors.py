"""Errors the product raises on purpose.

Library code raises these; only the edges (CLI, HTTP API, UI) turn them into
user messages and exit codes, so the message is the one line a user sees.
"""


class SwitchboardError(Exception):
    """Base of every error that carries a message meant for the user."""

    status_code = 400


class ConfigError(SwitchboardError):
    """A setting, flag or settings file is invalid."""


class NotFoundError(SwitchboardError):
    """A named thing (adapter, collection, run, message) does not exist."""

    status_code = 404


class InvalidAdapterError(SwitchboardError):
    """An adapter folder failed validation; the message names the file and the reason."""

    status_code = 422


class InvalidRequestError(SwitchboardError):
    """A request is malformed, empty or too long."""


class BusyError(SwitchboardError):
    """The server is over capacity; the caller should retry later."""

    status_code = 503

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UnavailableError(BusyError):
    """A part this server relies on (the engine server, the database, the Chroma server) does not answer now."""


class GenerationError(SwitchboardError):
    """One request's generation failed; the requests decoded beside it go on."""

    status_code = 500


class RequestCancelledError(SwitchboardError):
    """The caller went away and its generation was stopped (nothing is answered or logged)."""

    status_code = 499


class LockedError(SwitchboardError):
    """Another process holds a single-writer resource."""

    status_code = 409


class ForbiddenError(SwitchboardError):
    """A request that may not do what it asks, whoever sends it (a wrong feedback token, another site's page)."""

    status_code = 403


def validation_message(exc, template: str = "'{field}': {problem}", whole: str | None = None) -> str:
    """The one line a user sees for a pydantic validation error: its first problem, naming the field.

    ``template`` places ``{field}`` (the dotted path, without FastAPI's ``body``) and ``{problem}``;
    ``whole`` is used instead when the problem is with the whole object, not one field. Pydantic's
    ``Value error, `` label is dropped: the validator's own words are the message.
    """
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    problem = first["msg"].removeprefix("Value error, ")
    if not field and whole is not None:
        return whole.format(problem=problem)
    return template.format(field=field, problem=problem)
