"""Exporting an adapter: time, peak memory and output size of each format, and what GGUF precision costs in answers.

    .venv/bin/python bench/export.py [--runs 1] [--base-model ID]

Each export runs as ``switchboard export`` in a child process of its own,
which reports its own peak RSS (VmHWM). Times include starting that process. Output sizes are set against the
4-bit serving footprint of the same base (``get_memory_footprint`` of the
NF4 model the engine serves, as bench/adapters.py measures it). The quality
rows read each GGUF back with transformers' GGUF loader and compare greedy
answers to the bench prompts and next-token logits with the float32 merged
model: agreement is the share of prompts whose greedy answer is identical.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.prompts import PROMPTS  # noqa: E402

# (label, format, dtype); the float32 merged model is the reference of the quality rows.
EXPORTS = [
    ("peft", "peft", None),
    ("merged float32", "merged", "float32"),
    ("merged float16", "merged", "float16"),
    ("gguf f16 (+ LoRA gguf)", "gguf", "f16"),
    ("gguf q8_0 (+ LoRA gguf)", "gguf", "q8_0"),
    ("ollama q8_0", "ollama", "q8_0"),
]
NEW_TOKENS = 24


# The child reports its own high-water mark: wait4's ru_maxrss would include the RSS this parent had when it forked.
CHILD = """
import os, sys
from bot.cli import main
try:
    main()
finally:
    peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    with open(os.environ["BENCH_PEAK_FILE"], "w") as out:
        out.write(str(int(peak.split()[1]) * 1024))
"""


def run_export(home: Path, base_model: str | None, fmt: str, dtype: str | None, out: Path) -> tuple[float, int, dict]:
    """Seconds, peak RSS in bytes and the --json result of one ``switchboard export`` in its own process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env["SWITCHBOARD_HOME"] = str(home)
    env["BENCH_PEAK_FILE"] = str(home / "peak")
    if base_model:
        env["SWITCHBOARD_BASE_MODEL"] = base_model
    args = [sys.executable, "-c", CHILD, "export", "bench", "--format", fmt, "--out", str(out), "--force", "--json"]
    args += ["--dtype", dtype] if dtype else []
    started = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"export {fmt} {dtype} failed: {done.stderr.strip().splitlines()[-1]}")
    return seconds, int((home / "peak").read_text()), json.loads(done.stdout)


def greedy(model, tokenizer) -> tuple[list[list[int]], object]:
    import torch

    tokenizer.padding_side = "left"
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             for p in PROMPTS]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        logits = model(**batch).logits[:, -1]
        out = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[:, batch["input_ids"].shape[1]:].tolist(), logits


def row(*cells: str) -> str:
    widths = (26, 9, 13, 11, 14, 10)
    return "| " + " | ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="Exports of each format (medians of time and memory).")
    parser.add_argument("--base-model", default=None, help="Any Hugging Face id or folder (default: packaged SmolLM2).")
    args = parser.parse_args()

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from bot.parts import Parts
    from core.settings import load_settings
    from engine.base_model import load_base, resolve_base_model
    from training.random_adapter import make_random_adapter
    from training.recipe import Recipe

    hf_logging.disable_progress_bar()
    home = Path(tempfile.mkdtemp(prefix="bench-export-"))
    settings = load_settings({"home": home, "base_model": args.base_model})
    parts = Parts(settings)
    recipe = Recipe()  # shaped like the adapters switchboard train makes
    folder = make_random_adapter(AutoConfig.from_pretrained(resolve_base_model(settings)), home / "lora", seed=7,
                                 rank=recipe.rank, targets=tuple(recipe.target_modules))
    parts.registry.install(folder, "bench", system_prompt="Answer briefly.")
    four_bit = load_base(settings).footprint_bytes

    print(f"\nbase: {settings.base_model}; 4-bit serving footprint {four_bit / 1e6:.1f} MB; medians of {args.runs} run(s)")
    print(row("export", "seconds", "peak RSS MB", "output MB", "vs 4-bit base", "files"))
    print(row("-" * 26, "-" * 9, "-" * 13, "-" * 11, "-" * 14, "-" * 10), flush=True)
    outputs = {}
    for label, fmt, dtype in EXPORTS:
        out = home / "exports" / label.split(" (")[0].replace(" ", "-")
        runs = [run_export(home, args.base_model, fmt, dtype, out) for _ in range(args.runs)]
        seconds = statistics.median(r[0] for r in runs)
        rss = statistics.median(r[1] for r in runs)
        result = runs[-1][2]
        outputs[label] = result
        print(row(label, f"{seconds:.1f}", f"{rss / 1e6:,.0f}", f"{result['bytes'] / 1e6:,.1f}",
                  f"{result['bytes'] / four_bit:.2f}x", len(result["files"])), flush=True)

    merged_dir = Path(outputs["merged float32"]["out"])
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    reference = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    expected, expected_logits = greedy(reference, tokenizer)
    print(f"\nGGUF read back with transformers vs the float32 merged model ({len(PROMPTS)} prompts, {NEW_TOKENS} greedy tokens)")
    print("| GGUF                      | agreement | max logit diff |")
    print("| ------------------------- | --------- | -------------- |")
    for label, dtype in (("gguf f16 (+ LoRA gguf)", "f16"), ("gguf q8_0 (+ LoRA gguf)", "q8_0")):
        folder = Path(outputs[label]["out"])
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=f"bench-v1-{dtype}.gguf", dtype=torch.float32).eval()
        got, logits = greedy(model, tokenizer)
        agreement = sum(a == b for a, b in zip(got, expected)) / len(expected)
        difference = (logits - expected_logits).abs().max().item()
        print(f"| {dtype:<25} | {agreement:>9.0%} | {difference:>14.3f} |", flush=True)


if __name__ == "__main__":
    main()
