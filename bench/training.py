"""QLoRA on the 4-bit base against LoRA on the full-precision base: same data, same steps.

Each variant trains in a child process of its own, so its peak memory (peak
RSS on the CPU, peak allocated GPU memory on CUDA) is its own. On the CPU
with the 135M default the peak is mostly the Python process itself (torch,
transformers, TRL); the base-weights column shows what 4 bits save, which
is what dominates with a larger base. Step times
are medians over the steps after the first (which includes warm-up); tokens/s
is the median step's rate. Ratios are QLoRA over LoRA, measured in the same
run.

    .venv/bin/python bench/training.py [--steps 10] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {"lora": False, "qlora": True}  # baseline first


def child(variant: str, home: Path, base_model: str, steps: int, batch_size: int, out: Path) -> None:
    import torch

    from core.settings import load_settings
    from training.dataset import REPLAY_FILE, DatasetOptions, build_dataset
    from training.finetune import finetune
    from training.recipe import Recipe

    settings = load_settings({"home": home, "base_model": base_model}, environ={})
    data = build_dataset(files=[REPLAY_FILE], options=DatasetOptions(holdout_fraction=0, replay_fraction=0))
    recipe = Recipe(quantized=VARIANTS[variant], max_steps=steps, batch_size=batch_size, max_length=128, rank=16, alpha=32)
    marks: list[float] = []
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = finetune(settings, data.train, home / "runs" / variant, recipe=recipe, progress=lambda p: marks.append(p.elapsed_s))
    steps_s = [b - a for a, b in zip(marks, marks[1:])] or [result.seconds]
    step = statistics.median(steps_s)
    tokens_per_step = result.tokens_seen / max(result.steps, 1)
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out.write_text(
        json.dumps(
            {
                "variant": variant,
                "device": "cuda" if torch.cuda.is_available() else "cpu",
                "steps": result.steps,
                "median_step_s": step,
                "tokens_per_s": tokens_per_step / step if step else 0.0,
                "peak_bytes": peak,
                "weights_bytes": result.base_bytes,
                "final_loss": result.train_loss,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per variant")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--base-model", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.home, args.base_model, args.steps, args.batch_size, args.out)
        return

    from core.settings import load_settings
    from engine.base_model import resolve_base_model

    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        home = Path(tmp)
        base_model = resolve_base_model(load_settings({"home": home}, environ={}))
        rows = []
        for variant in VARIANTS:
            out = home / f"{variant}.json"
            print(f"training {variant} for {args.steps} steps ...", file=sys.stderr, flush=True)
            command = [
                sys.executable, __file__, "--child", variant, "--home", str(home), "--base-model", base_model,
                "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--out", str(out),
            ]
            subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL)
            rows.append(json.loads(out.read_text()))

    base = rows[0]
    print(f"\nSame data, {args.steps} steps, batch {args.batch_size}, max 128 tokens, rank 16, on {base['device']}")
    print(f"{'variant':<22}{'median step s':>14}{'tokens/s':>10}{'base MiB':>10}{'peak MiB':>10}{'final loss':>12}")
    for row in rows:
        label = "LoRA, full precision" if row["variant"] == "lora" else "QLoRA, 4-bit NF4"
        print(
            f"{label:<22}{row['median_step_s']:>14.2f}{row['tokens_per_s']:>10.1f}"
            f"{row['weights_bytes'] / 2**20:>10.0f}{row['peak_bytes'] / 2**20:>10.0f}{row['final_loss']:>12.3f}"
        )
    qlora = rows[1]
    print(
        f"\nQLoRA / LoRA: speed {qlora['tokens_per_s'] / base['tokens_per_s']:.2f}x, "
        f"base weights {qlora['weights_bytes'] / base['weights_bytes']:.2f}x, "
        f"peak memory {qlora['peak_bytes'] / base['peak_bytes']:.2f}x"
    )


if __name__ == "__main__":
    main()
