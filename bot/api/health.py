"""``GET /health``: what a load balancer or the kill trials poll.

200 with each part's latency while every part answers; 503 with Retry-After, the same report and an error
naming the parts that are down while one does not (the database, the Chroma server, the engine), or once the
generation worker has stopped.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from bot.api.dependencies import AdminDep
from bot.api.guards import error_body

router = APIRouter()

RETRY_AFTER_S = 5


@router.get("/health")
def health(admin: AdminDep) -> Any:
    report = admin.health()
    if report["status"] == "ok":
        return report
    down = report.pop("error")
    return JSONResponse({**report, **error_body(503, f"a part is down: {down}")}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
