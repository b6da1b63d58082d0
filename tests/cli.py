"""The installed command as a user runs it: ``python -m bot ...`` in a fresh process.

A fresh process is also the fast one for long work: the suite's own process
holds the thread pools of every parts its fixtures started, and training
beside them is slower (the demo bootstrap in the suite's process: 706 and
793 s; in its own process, within the suite: 598 s, on 2 cores).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def cli_env(home: Path, base_model: str | Path | None = None, **settings: str) -> dict[str, str]:
    """This environment without the caller's own ``SWITCHBOARD_*`` settings, pointed at ``home``; ``settings``
    add some by their variable's name without the prefix (``DATABASE_URL="postgresql://..."``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env["SWITCHBOARD_HOME"] = str(home)
    if base_model is not None:
        env["SWITCHBOARD_BASE_MODEL"] = str(base_model)
    env.update({f"SWITCHBOARD_{name}": value for name, value in settings.items()})
    return env


def command(*args: str) -> list[str]:
    """``switchboard *args`` as this interpreter runs it, for a caller that starts the process itself."""
    return [sys.executable, "-m", "bot", *args]


def switchboard(
    home: Path, *args: str, base_model: str | Path | None = None, timeout: float = 300, settings: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``switchboard *args`` on ``home`` and capture its output as text (``settings``: see :func:`cli_env`)."""
    return subprocess.run(
        command(*args), cwd=ROOT, env=cli_env(home, base_model, **(settings or {})), capture_output=True, text=True,
        timeout=timeout,
    )


# ---- long-running commands: started in their own process group, killed with SIGKILL like a crash


def start(home: Path, base_model: Path, *args: str, **settings: str) -> subprocess.Popen:
    return subprocess.Popen(
        command(*args), cwd=ROOT, env=cli_env(home, base_model, **settings), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def kill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def read_stderr(process: subprocess.Popen) -> list[str]:
    """Collect the process's stderr in the background (progress bars write without newlines)."""
    seen: list[str] = []
    threading.Thread(target=lambda: seen.extend(iter(lambda: process.stderr.read(1), "")), daemon=True).start()
    return seen


def wait_for(
    condition, seconds: float, process: subprocess.Popen | None = None, seen: list[str] = (), every: float = 0.05
) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended early: {''.join(seen)[-2000:]}")
        assert time.monotonic() < deadline, "".join(seen)[-2000:]
        time.sleep(every)


class InIdleTime:
    """``switchboard *args`` started now and collected later, on the CPU time the rest of the suite leaves idle.

    Most of the suite keeps one core busy (HTTP, SQLite, Chroma, one process at
    a time), so a long command such as the demo bootstrap can run beside it:
    under ``SCHED_IDLE`` it gets a core only while no test wants it, and with
    one torch thread it needs only one. Its tests run last and collect it.
    Where the kernel groups processes by session (autogroup), a session's group
    weighs as much as any other whatever its tasks' policy, so the command's
    session gets the lowest group weight too; without that it took half the
    cores from a training run the suite was waiting for.
    """

    def __init__(self, home: Path, base_model: Path, *args: str) -> None:
        self.home, self.stdout, self.stderr = home, home.with_suffix(".stdout"), home.with_suffix(".stderr")
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            self.process = subprocess.Popen(
                command(*args), cwd=ROOT, env={**cli_env(home, base_model), "OMP_NUM_THREADS": "1"}, stdout=out,
                stderr=err, start_new_session=True,
            )
        if hasattr(os, "SCHED_IDLE"):  # Linux; elsewhere it competes as any test would
            os.sched_setscheduler(self.process.pid, os.SCHED_IDLE, os.sched_param(0))
        autogroup = Path(f"/proc/{self.process.pid}/autogroup")
        if autogroup.exists():
            autogroup.write_text("19")

    def result(self, timeout: float) -> subprocess.CompletedProcess:
        """Once it has ended (what is left runs on an idle machine: the suite waits here)."""
        code = self.process.wait(timeout=timeout)
        return subprocess.CompletedProcess(
            self.process.args, code, self.stdout.read_text(encoding="utf-8"), self.stderr.read_text(encoding="utf-8", errors="replace")
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            kill(self.process)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def serve(home: Path, base_model: Path, **settings: str) -> tuple[subprocess.Popen, str, list[str]]:
    """``switchboard serve`` on a free loopback port, once ``/health`` answers 200."""
    port = free_port()
    process = start(home, base_model, "serve", "--port", str(port), **settings)
    seen = read_stderr(process)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: healthy(url), 300, process, seen)
    return process, url, seen


def stream_until_killed(url: str, body: dict, streaming: threading.Barrier, after_lines: int = 3) -> None:
    """A streaming chat client: it meets the others at ``streaming`` once ``after_lines`` lines have come, then
    reads on until its turn ends or the server dies under it (that turn is lost, as a crash allows)."""
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as response:
            for number, _ in enumerate(response.iter_lines()):
                if number == after_lines:
                    streaming.wait(timeout=120)
    except httpx.HTTPError:
        pass
