"""Running the app under uvicorn: ``serve`` for ``switchboard serve``, ``serving`` for a server inside a with-block.

``serving`` is what the tests, the benchmarks and the screenshot script start
a live server with: the real app on a free loopback port, in a background
thread, stopped when the block ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import FastAPI

from bot.api.app import create_app
from bot.api.guards import is_loopback_name
from bot.parts import Parts
from core.errors import ConfigError
from core.settings import Settings

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60


def check_bind(host: str, admin_token: str | None) -> None:
    """Without an admin token the admin routes are open, so only this machine may reach them."""
    if admin_token:
        return
    if not is_loopback_name(host):
        raise ConfigError(
            f"refusing to serve on {host} without an admin token: set SWITCHBOARD_ADMIN_TOKEN, or bind 127.0.0.1"
        )


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Serve the UI at / and the API at /v1 on one port until interrupted."""
    import uvicorn

    from engine.threads import reserve_for_workers

    reserve_for_workers()  # before the models load: the scheduler's thread decodes on every core

    host = host or settings.server.host
    port = port or settings.server.port
    check_bind(host, settings.admin_token)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not settings.admin_token:
        log.warning("no admin token set (SWITCHBOARD_ADMIN_TOKEN): serving on loopback only, admin actions open to local users")
    parts = Parts(settings)
    parts.warm()
    app = create_app(parts)
    parts.admin.watch(settings.server.follow_s)  # changes made by another replica sharing the registry folder
    log.info("Switchboard at http://%s:%d/ (API at /v1)", host, port)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)


@contextmanager
def serving(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` in a background thread (port 0: a free one); yields its base URL once it accepts connections."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True, name="live-server")
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the live server did not start")
        time.sleep(0.05)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
