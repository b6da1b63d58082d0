"""The installed command as a user runs it: ``python -m bot ...`` in a fresh process.

A fresh process is also the fast one for long work: the suite's own process
holds the thread pools of every parts its fixtures started, and training
beside them is slower (the demo bootstrap in the suite's process: 706 and
793 s; in its own process, within the suite: 598 s, on 2 cores).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli_env(home: Path, base_model: str | Path | None = None) -> dict[str, str]:
    """This environment without the caller's own ``SWITCHBOARD_*`` settings, pointed at ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env["SWITCHBOARD_HOME"] = str(home)
    if base_model is not None:
        env["SWITCHBOARD_BASE_MODEL"] = str(base_model)
    return env


def command(*args: str) -> list[str]:
    """``switchboard *args`` as this interpreter runs it, for a caller that starts the process itself."""
    return [sys.executable, "-m", "bot", *args]


def switchboard(
    home: Path, *args: str, base_model: str | Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``switchboard *args`` on ``home`` and capture its output as text."""
    return subprocess.run(
        command(*args), cwd=ROOT, env=cli_env(home, base_model), capture_output=True, text=True, timeout=timeout,
    )
