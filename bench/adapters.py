"""Adapter switching, memory and mixed-batch throughput on the shared 4-bit base.

    .venv/bin/python bench/adapters.py [--runs 5] [--tokens 32]

Every figure is paired with a baseline measured in the same run and printed as
a ratio: hot switch vs reloading base + adapter, 4-bit vs full precision, and
one mixed batch of 8 requests over 4 adapters vs the same 8 one after another.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import AutoConfig  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from bench.prompts import PROMPTS  # noqa: E402
from bench.timing import median_seconds  # noqa: E402
from core.settings import load_settings  # noqa: E402
from engine.base_model import load_base, resolve_base_model  # noqa: E402
from engine.decoding import GenerationRequest  # noqa: E402
from engine.embedded import Engine  # noqa: E402
from training.random_adapter import make_random_adapter  # noqa: E402
from training.recipe import Recipe  # noqa: E402


def resident_bytes(engine: Engine, keys: list[str], folders: list[Path]) -> list[int]:
    """What each adapter adds to the engine's parameters and buffers as it is loaded, one after another."""
    added = []
    for key, folder in zip(keys, folders):
        before = engine.memory_bytes()
        engine.load_adapter(key, folder)
        added.append(engine.memory_bytes() - before)
    return added


def row(name: str, value: str, baseline: str, ratio: str, target: str) -> str:
    return f"| {name:<46} | {value:>14} | {baseline:>16} | {ratio:>10} | {target:>10} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="Repetitions for the slow baselines (medians).")
    parser.add_argument("--tokens", type=int, default=32, help="New tokens per request in the throughput test.")
    parser.add_argument("--base-model", default=None, help="Any Hugging Face id or folder (default: packaged SmolLM2).")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()
    hf_logging.disable_progress_bar()

    home = Path(tempfile.mkdtemp(prefix="bench-adapters-"))
    settings = load_settings({"home": home, "base_model": args.base_model, "device": args.device, "max_resident_adapters": 16})
    config = AutoConfig.from_pretrained(resolve_base_model(settings))
    recipe = Recipe()  # adapters shaped like the ones switchboard train makes
    shape = dict(rank=recipe.rank, targets=tuple(recipe.target_modules))
    folders = [make_random_adapter(config, home / f"lora{i}", seed=i, **shape) for i in range(4)]

    print(f"\nbase: {settings.base_model} ({settings.quantization}); medians of {args.runs} runs", flush=True)
    print(row("measure", "value", "baseline", "ratio", "target"))
    print(row("-" * 46, "-" * 14, "-" * 16, "-" * 10, "-" * 10), flush=True)
    engine = Engine(settings)
    base_bytes = engine.memory_bytes()
    keys = [f"bench{i}__v1" for i in range(len(folders))]
    adapter_bytes = resident_bytes(engine, keys, folders)

    # Switch: a request for another resident adapter names it (registered) and, when it joins a batch, marks it
    # most recently used; its factors already sit in a slot, so nothing is copied.
    from adapters.manifest import Manifest

    manifests = [Manifest(name=f"bench{i}", version=1, path=str(f)) for i, f in enumerate(folders)]
    switches = 2000
    started = time.perf_counter()
    for n in range(switches):
        engine.activate([engine.ensure(manifests[n % 4])])
    hot_switch = (time.perf_counter() - started) / switches

    def cold_start() -> None:
        fresh = Engine(settings)
        fresh.load_adapter(keys[0], folders[0])

    cold = median_seconds(cold_start, args.runs)
    print(row("hot switch vs reload base+adapter (s)", f"{hot_switch:.2e}", f"{cold:.2f}", f"{cold / hot_switch:,.0f}x", ">= 1000x"), flush=True)

    full = load_settings({"home": home, "base_model": args.base_model, "device": args.device, "quantization": "none"})
    full_bytes = load_base(full).footprint_bytes
    four_bit_bytes = engine.base.footprint_bytes
    print(row("4-bit footprint vs full precision (MB)", f"{four_bit_bytes / 1e6:.1f}", f"{full_bytes / 1e6:.1f}", f"{four_bit_bytes / full_bytes:.1%}", "<= 35%"))
    per_adapter = statistics.median(adapter_bytes)
    recipe_name = f"r={recipe.rank}, {len(recipe.target_modules)} proj., {settings.adapter_dtype}"
    print(row(f"per resident adapter ({recipe_name})", f"{per_adapter / 1e6:.2f} MB", f"{base_bytes / 1e6:.1f} MB", f"{per_adapter / four_bit_bytes:.2%}", "<= 2%"), flush=True)
    wide = settings.model_copy(update={"adapter_dtype": "float32"})
    wide_engine = Engine(wide)  # its own base: slots are sized by the dtype, largest rank and targets they hold
    per_wide = statistics.median(resident_bytes(wide_engine, keys, folders))
    del wide_engine
    print(row("the same adapters in float32 slots", f"{per_adapter / 1e6:.2f} MB", f"{per_wide / 1e6:.2f} MB", f"{per_adapter / per_wide:.2f}x", ""), flush=True)

    options = engine.default_options(max_new_tokens=args.tokens, ignore_eos=True)
    requests = [GenerationRequest([{"role": "user", "content": p}], keys[i % 4], options) for i, p in enumerate(PROMPTS)]
    engine.generate_batch(requests[:2])  # warm-up

    def batched() -> None:
        engine.generate_batch(requests)

    def sequential() -> None:
        for request in requests:
            engine.generate_batch([request])

    tokens = len(requests) * args.tokens
    batch_tps = tokens / median_seconds(batched, args.runs)
    seq_tps = tokens / median_seconds(sequential, args.runs)

    print(row("8 req / 4 adapters: mixed batch vs sequential", f"{batch_tps:.1f} tok/s", f"{seq_tps:.1f} tok/s", f"{batch_tps / seq_tps:.2f}x", ">= 3x"))


if __name__ == "__main__":
    main()
