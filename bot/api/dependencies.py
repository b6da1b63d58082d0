"""What a route is handed: the pipeline, the admin facade, the settings, and the admin-token check.

``create_app`` puts the three on ``app.state``; routes ask for them by type,
so the routers are plain module-level ``APIRouter``s shared by every app.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from bot.admin import Admin, check_token
from bot.pipeline import Pipeline
from core.settings import Settings

bearer = HTTPBearer(auto_error=False, description="The server's SWITCHBOARD_ADMIN_TOKEN.")


async def _pipeline(request: Request) -> Pipeline:
    return request.app.state.pipeline


async def _admin(request: Request) -> Admin:
    return request.app.state.admin


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


PipelineDep = Annotated[Pipeline, Depends(_pipeline)]
AdminDep = Annotated[Admin, Depends(_admin)]
SettingsDep = Annotated[Settings, Depends(_settings)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def require_admin(settings: SettingsDep, credentials: Credentials) -> None:
    """Admin routes are open only when the server has no admin token (it then binds loopback only)."""
    check_token(settings.admin_token, credentials.credentials.strip() if credentials else None)
