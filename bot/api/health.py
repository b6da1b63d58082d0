"""``GET /health``: what a load balancer or the kill trials poll; 503 once the generation worker has stopped."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from bot.api.dependencies import AdminDep

router = APIRouter()


@router.get("/health")
def health(admin: AdminDep) -> dict[str, Any]:
    return admin.health()
