"""Prompt trimming of a long history: the pipeline's linear trim against re-rendering per dropped pair.

    .venv/bin/python bench/trimming.py [--runs 3] [--sizes 200,400,800,3200] [--baseline-up-to 800]

The baseline is the trimming loop as it was (render and tokenize the whole prompt, drop the oldest pair,
again), measured in the same run on the same histories; it is quadratic in the history, so it is measured
only up to ``--baseline-up-to`` messages. Medians of ``--runs``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import median_seconds  # noqa: E402
from bot.parts import Parts  # noqa: E402
from core.settings import load_settings  # noqa: E402
from knowledge.prompt import build_messages  # noqa: E402

MESSAGE = "Summarise our chat."


def history_of(size: int) -> list[dict]:
    return [
        {"role": "user" if n % 2 == 0 else "assistant", "content": f"Message {n} about item {n * 7}." + " filler" * 5}
        for n in range(size)
    ]


def rerendering_trim(engine, history: list[dict], room: int) -> list[dict]:
    """The loop trimming used to run: one full rendering per dropped pair."""
    while history and len(engine.render(build_messages(MESSAGE, [], None, history))) > room:
        history = history[2:]
    return build_messages(MESSAGE, [], None, history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="200,400,800,3200")
    parser.add_argument("--baseline-up-to", type=int, default=800)
    parser.add_argument("--base-model", default=None, help="Base model id or folder (default: the packaged SmolLM2).")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bench-trimming-"))
    parts = Parts(load_settings({"home": home, "base_model": args.base_model}))
    pipeline = parts.pipeline
    engine = parts.engine
    options = engine.default_options()
    room = engine.context_window - min(options.max_new_tokens, engine.context_window // 2)

    print(f"{'messages':>8} {'linear s':>9} {'re-render s':>12} {'ratio':>7}  kept")
    for size in (int(s) for s in args.sizes.split(",")):
        history = history_of(size)
        messages, _ = pipeline._fit(MESSAGE, [], None, history, options)
        linear = median_seconds(lambda: pipeline._fit(MESSAGE, [], None, history, options), args.runs)
        if size <= args.baseline_up_to:
            expected = rerendering_trim(engine, history, room)
            assert expected == messages, "the linear trim must keep exactly what the old loop kept"
            baseline = median_seconds(lambda: rerendering_trim(engine, history, room), args.runs)
            print(f"{size:>8} {linear:>9.3f} {baseline:>12.3f} {baseline / linear:>6.1f}x  {len(messages) - 2}")
        else:
            print(f"{size:>8} {linear:>9.3f} {'-':>12} {'-':>7}  {len(messages) - 2}")


if __name__ == "__main__":
    main()
