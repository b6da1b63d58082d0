"""The HTTP conversation with one vLLM server: its models, its runtime LoRA API and streamed completions.

Every transport failure becomes :class:`core.errors.UnavailableError` (503 with
Retry-After at the edge) and a request for an adapter the server does not hold
becomes :class:`AdapterNotLoadedError`, which the scheduler repairs once.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from core.errors import GenerationError, InvalidRequestError, UnavailableError
from core.sections import EngineConfig

RETRY_AFTER_S = 5.0  # a vLLM server restarting takes tens of seconds; clients come back in a few
ADMIN_TIMEOUT_S = 30.0  # loading an adapter reads its weights; nothing else takes long
TRANSPORT_ERRORS = (httpx.TransportError,)


class AdapterNotLoadedError(GenerationError):
    """The server does not know the adapter asked for: it restarted, or another replica unloaded it."""


def unavailable(url: str, exc: Exception) -> UnavailableError:
    return UnavailableError(f"the vLLM server at {url} does not answer ({type(exc).__name__})", retry_after=RETRY_AFTER_S)


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    error = body.get("error", body) if isinstance(body, dict) else body
    return str(error.get("message", error) if isinstance(error, dict) else error)[:300]


def _raise_for(response: httpx.Response, model: str | None = None) -> None:
    if response.status_code < 400:
        return
    message = _message(response)
    if response.status_code == 404 and model is not None:
        raise AdapterNotLoadedError(f"the vLLM server does not hold {model}: {message}")
    if response.status_code in (400, 422):
        raise InvalidRequestError(f"the vLLM server refused the request: {message}")
    if response.status_code in (502, 503, 504):
        raise UnavailableError(f"the vLLM server is not ready: {message}", retry_after=RETRY_AFTER_S)
    raise GenerationError(f"the vLLM server failed the request ({response.status_code}): {message}")


class VLLMClient:
    """One vLLM server. The blocking calls are for admin work; :meth:`stream` runs on the scheduler's event loop."""

    def __init__(self, config: EngineConfig) -> None:
        self.url = config.url.rstrip("/")
        self.timeout_s = config.timeout_s
        self._headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=self._headers, timeout=ADMIN_TIMEOUT_S)

    def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except TRANSPORT_ERRORS as exc:
            raise unavailable(self.url, exc) from exc

    def ping(self) -> float:
        """Seconds the server took to answer ``/health``; raises UnavailableError when it does not."""
        started = time.perf_counter()
        _raise_for(self._call("GET", "/health"))
        return time.perf_counter() - started

    def models(self) -> list[dict]:
        """The served models: the base (no parent) and every LoRA adapter loaded into it."""
        response = self._call("GET", "/v1/models")
        _raise_for(response)
        return response.json()["data"]

    def load_adapter(self, name: str, path: str) -> None:
        """Load a PEFT folder under ``name``; a name already loaded (by this or another replica) is fine."""
        response = self._call("POST", "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
        if response.status_code == 400 and "already been loaded" in _message(response):
            return
        if response.status_code == 404:  # the server was started without VLLM_ALLOW_RUNTIME_LORA_UPDATING=True
            raise UnavailableError(
                "the vLLM server has no runtime LoRA API: start it with --enable-lora and "
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True",
                retry_after=RETRY_AFTER_S,
            )
        _raise_for(response)

    def unload_adapter(self, name: str) -> None:
        """Unload ``name``; one the server no longer holds (restarted, unloaded by another replica) is fine."""
        response = self._call("POST", "/v1/unload_lora_adapter", json={"lora_name": name})
        if response.status_code == 404:
            return
        _raise_for(response)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[httpx.AsyncClient]:
        """The event loop's own connection pool (httpx's async clients belong to one loop)."""
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        timeout = httpx.Timeout(self.timeout_s, connect=10.0)
        async with httpx.AsyncClient(base_url=self.url, headers=self._headers, timeout=timeout, limits=limits) as http:
            yield http

    async def stream(self, http: httpx.AsyncClient, body: dict) -> AsyncIterator[dict]:
        """The chunks of one streamed completion. Closing the iterator closes the connection, which makes vLLM
        abort the request."""
        try:
            async with http.stream("POST", "/v1/completions", json=body) as response:
                if response.status_code >= 400:
                    await response.aread()
                    _raise_for(response, body["model"])
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[len("data: ") :]
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise GenerationError(f"the vLLM server failed the request: {chunk['error']}")
                    yield chunk
        except TRANSPORT_ERRORS as exc:
            raise unavailable(self.url, exc) from exc
