"""The ``/admin`` routes: adapters, exports, untrusted feedback, knowledge and training, all through the admin facade.

Every route needs the admin token when the server has one. Uploads are
multipart forms (field ``files``), read here and handed to the facade as
(name, file) pairs, the same way the UI hands over its uploads.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from bot.admin import split_commas, split_lines
from bot.api.bodies import ExportRequest, parse_json, read_json
from bot.api.dependencies import AdminDep, require_admin
from bot.api.openapi import json_body, multipart_body
from core.errors import InvalidRequestError

router = APIRouter(dependencies=[Depends(require_admin)])

ADAPTER_FORM = multipart_body(
    ["name"],
    {
        "name": "Adapter name; an installed name gets its next version.",
        "description": "What the adapter is for.",
        "examples": "Routing examples: one per line, or a JSON list of strings.",
        "collections": "Knowledge collections it retrieves from, comma-separated.",
        "system_prompt": "Its system prompt.",
        "no_answer": "What it says when the sources hold no answer.",
    },
)


# ---- adapters


@router.get("/admin/adapters")
def list_adapters(admin: AdminDep) -> list[dict[str, Any]]:
    return [m.summary() for m in admin.adapters()]


@router.post("/admin/adapters", status_code=201, openapi_extra=ADAPTER_FORM)
async def install_adapter(request: Request, admin: AdminDep) -> dict[str, Any]:
    form = await request.form(max_files=64)
    try:
        uploads = _uploads(form)
        name = str(form.get("name") or "").strip()
        if not name:
            raise InvalidRequestError("the form field 'name' is required")
        manifest = await run_in_threadpool(
            admin.install_adapter,
            uploads,
            name,
            description=str(form.get("description") or ""),
            examples=_examples(form.get("examples")),
            collections=split_commas(str(form.get("collections") or "")),
            system_prompt=str(form.get("system_prompt") or "") or None,
            no_answer=str(form.get("no_answer") or "") or None,
        )
    finally:
        await form.close()
    return {**manifest.summary(), "collections": manifest.collections, "examples": len(manifest.examples)}


@router.post("/admin/adapters/{name}/enable")
def enable_adapter(name: str, admin: AdminDep) -> dict[str, Any]:
    return admin.set_enabled(name, True).summary()


@router.post("/admin/adapters/{name}/disable")
def disable_adapter(name: str, admin: AdminDep) -> dict[str, Any]:
    return admin.set_enabled(name, False).summary()


@router.post("/admin/adapters/{name}/rollback")
def rollback_adapter(name: str, admin: AdminDep) -> dict[str, Any]:
    """Serve the version before the current one again, live (the engine unloads the newer one)."""
    return admin.rollback_adapter(name).summary()


@router.delete("/admin/adapters/{name}")
def remove_adapter(name: str, admin: AdminDep) -> dict[str, Any]:
    admin.remove_adapter(name)
    return {"name": name, "removed": True}


# ---- exports


@router.post("/admin/adapters/{name}/export", status_code=201, openapi_extra=json_body("ExportRequest"))
async def export_adapter(name: str, request: Request, admin: AdminDep) -> dict[str, Any]:
    """Build an export (ExportRequest as JSON); the answer lists the files and where to download them."""
    body = await parse_json(request, ExportRequest)
    return await run_in_threadpool(admin.export_adapter, name, body.format, body.version, body.dtype)


@router.get("/admin/exports/{export_id}.zip")
async def download_export(export_id: str, admin: AdminDep) -> FileResponse:
    archive = await run_in_threadpool(admin.export_archive, export_id)
    return FileResponse(archive, media_type="application/zip", filename=archive.name)


# ---- feedback an operator vouches for


@router.get("/admin/feedback")
def untrusted_feedback(admin: AdminDep) -> list[dict[str, Any]]:
    """Feedback sent without the answer's feedback token, waiting for an operator to accept it."""
    return admin.untrusted_feedback()


@router.post("/admin/feedback/{message_id}/accept")
def accept_feedback(admin: AdminDep, message_id: str = Path(max_length=128)) -> dict[str, Any]:
    """Let training use the untrusted feedback on this answer."""
    return {"message_id": message_id, "accepted": admin.accept_feedback(message_id)}


# ---- knowledge


@router.get("/admin/knowledge")
def list_knowledge(admin: AdminDep) -> list[dict[str, Any]]:
    return admin.collections()


@router.post("/admin/knowledge/{collection}", openapi_extra=multipart_body([], {}))
async def ingest(collection: str, request: Request, admin: AdminDep) -> dict[str, Any]:
    form = await request.form(max_files=1000)
    try:
        replace = str(form.get("replace") or "").strip().lower() in ("1", "true", "yes", "on")
        return await run_in_threadpool(admin.ingest, _uploads(form), collection, False, replace)
    finally:
        await form.close()


@router.delete("/admin/knowledge/{collection}/{source}")
def remove_document(collection: str, source: str, admin: AdminDep) -> dict[str, Any]:
    return admin.remove_document(source, collection)


# ---- training


@router.post("/admin/train", status_code=202, openapi_extra=json_body("TrainRequest"))
async def start_training(request: Request, admin: AdminDep) -> dict[str, Any]:
    """Start a run in the background (the TrainRequest fields as JSON); poll GET /admin/train/{run_id}."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidRequestError("the training request must be a JSON object")
    run_id = await run_in_threadpool(admin.start_training, body)  # training checks the fields
    return {"run_id": run_id, "status_url": f"/admin/train/{run_id}"}


@router.get("/admin/train/{run_id}")
def training_status(run_id: str, admin: AdminDep) -> dict[str, Any]:
    return admin.training_status(run_id)


# ---- form fields


def _uploads(form: FormData) -> list[tuple[str, Any]]:
    files = [value for value in form.getlist("files") if isinstance(value, UploadFile)]
    if not files:
        raise InvalidRequestError("attach the files as multipart form field 'files'")
    return [(f.filename, f.file) for f in files]


def _examples(value: Any) -> list[str]:
    """Routing examples: one per line, or a JSON list of strings."""
    text = str(value or "").strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(f"'examples' is not a valid JSON list ({exc})") from None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise InvalidRequestError("'examples' must be a list of strings")
        return [i.strip() for i in items if i.strip()]
    return split_lines(text)
