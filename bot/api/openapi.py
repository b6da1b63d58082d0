"""The served OpenAPI schema, made to describe the API as it is.

The handlers read their bodies themselves (size-capped, strict JSON,
multipart uploads), so FastAPI cannot see them; each route names its body
here instead, and the schema gains the models, the error body every refusal
uses, and the bearer scheme of the admin token (optional when none is set).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

REF = "#/components/schemas/{model}"
ERRORS = {
    400: "The request is malformed, or a value is out of range.",
    401: "The admin token is missing or wrong.",
    403: "Refused: a cross-site request, or a wrong feedback token.",
    404: "No such adapter, collection, document, message or run.",
    409: "Busy with another change (a training run in progress).",
    413: "The body or upload is over the configured size limit.",
    415: "The body is not JSON where JSON is expected.",
    422: "An uploaded adapter or document cannot be used.",
    503: "Over capacity: retry after the Retry-After header's seconds.",
}


class ErrorDetail(BaseModel):
    message: str = Field(description="One line for the user; never a server path.")
    type: str = Field(description="OpenAI's error type, e.g. invalid_request_error.")
    code: int = Field(description="The HTTP status.")


class ErrorBody(BaseModel):
    """Every refusal, from every route and guard."""

    error: ErrorDetail


def error_responses() -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody, "description": text} for status, text in ERRORS.items()}


def json_body(model_name: str) -> dict[str, Any]:
    """A route's ``openapi_extra`` for a JSON body of a model that :func:`install_schema` registers."""
    schema = {"$ref": REF.format(model=model_name)}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def chat_body(model_name: str) -> dict[str, Any]:
    """A JSON body whose answer is JSON, or server-sent events when the request asks to stream."""
    events = {"schema": {"type": "string"}}
    return {**json_body(model_name), "responses": {"200": {"content": {"text/event-stream": events}}}}


OPTIONAL_AUTH = {"security": [{}]}  # added to a route's declared bearer scheme: the token is welcome, not needed


def multipart_body(required: list[str], fields: dict[str, str]) -> dict[str, Any]:
    """A route's ``openapi_extra`` for an upload: form field ``files`` (one or more) and text fields."""
    properties: dict[str, Any] = {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1}
    }
    properties.update({name: {"type": "string", "description": text} for name, text in fields.items()})
    schema = {"type": "object", "required": ["files", *required], "properties": properties}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def install_schema(app: FastAPI, models: Callable[[], list[type[BaseModel]]], token_required: bool) -> None:
    """Serve the schema with the body models added (built on first request, so heavy models load late)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models():
                generated = model.model_json_schema(ref_template=REF)
                components.update(generated.pop("$defs", {}))
                components[model.__name__] = generated
            if not token_required:  # without a token the admin routes are open (to this machine only)
                for operation in _operations(schema):
                    if "security" in operation and {} not in operation["security"]:
                        operation["security"] = [*operation["security"], {}]
        return app.openapi_schema

    app.openapi = openapi


def _operations(schema: dict[str, Any]):
    for item in schema.get("paths", {}).values():
        yield from (operation for operation in item.values() if isinstance(operation, dict))
