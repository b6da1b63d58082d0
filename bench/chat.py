"""One chat turn end to end over HTTP: time to first token, total latency, and where the time goes.

    .venv/bin/python bench/chat.py [--turns 10] [--tokens 32]

A live server (API and UI, as ``switchboard serve`` runs it) on a temporary
home with the demo support and legal adapters (random weights: they decode to
the token limit, so every turn generates the same number of tokens) and the
demo knowledge. Each turn streams ``model="auto"`` over HTTP; the server's
per-stage timings come back in ``switchboard.timings_ms``. The baseline is
generation alone (the scheduler, in-process) on the same prompt, so the ratio is the cost
of everything around generation: routing, retrieval, prompt building, the
conversation log, HTTP and SSE. Target: under 10% of the turn outside generation.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.sse import sse_chunks  # noqa: E402
from bot.api.app import create_app  # noqa: E402
from bot.api.server import serving  # noqa: E402
from bot.parts import Parts  # noqa: E402
from bot.turn import STAGES, TurnRequest  # noqa: E402
from core.settings import load_settings  # noqa: E402
from engine.base_model import resolve_base_model  # noqa: E402
from engine.decoding import GenerationRequest  # noqa: E402
from engine.threads import reserve_for_workers  # noqa: E402

DEMO = ROOT / "demo"
TARGET_OUTSIDE_SHARE = 0.10


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def build_parts(home: Path, base_model: str | None, device: str, tokens: int, **overrides) -> Parts:
    """A warm Parts with the demo adapters and knowledge; ``overrides`` are more settings (a database_url...)."""
    settings = load_settings(
        {"home": home, "base_model": base_model, "device": device, "generation": {"max_new_tokens": tokens}, **overrides},
        environ={},
    )
    parts = Parts(settings)
    install_demo(parts, home / "uploads")
    parts.warm()
    return parts


def install_demo(parts: Parts, uploads: Path) -> None:
    """The demo support and legal adapters (random weights, the demo manifests) and their documents."""
    from transformers import AutoConfig

    from training.random_adapter import make_random_adapter

    config = AutoConfig.from_pretrained(resolve_base_model(parts.settings))
    for seed, name in enumerate(("support", "legal")):
        fields = json.loads((DEMO / name / "manifest.json").read_text(encoding="utf-8"))
        folder = make_random_adapter(config, uploads / name, seed=seed)
        parts.registry.install(
            folder, name, description=fields["description"], examples=fields["examples"],
            collections=fields["collections"], system_prompt=fields["system_prompt"], no_answer=fields["no_answer"],
        )
        parts.knowledge.ingest([DEMO / name / "knowledge"], name)


def questions(count: int) -> list[str]:
    pool = []
    for name in ("support", "legal"):
        lines = (DEMO / name / "golden.jsonl").read_text(encoding="utf-8").splitlines()
        pool.append([json.loads(line)["question"] for line in lines if line.strip()])
    mixed = [q for pair in zip(*pool) for q in pair]
    return [mixed[i % len(mixed)] for i in range(count)]


def stream_turn(client: httpx.Client, question: str) -> dict:
    started = time.perf_counter()
    first = None
    final = None
    body = {"model": "auto", "stream": True, "messages": [{"role": "user", "content": question}]}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for chunk in sse_chunks(response):
            delta = chunk["choices"][0]["delta"] if chunk["choices"] else {}
            if delta.get("content") and first is None:
                first = time.perf_counter()
            if chunk["choices"] and chunk["choices"][0]["finish_reason"]:
                final = chunk["switchboard"]
    total = time.perf_counter() - started
    return {"question": question, "ttft": (first or started + total) - started, "total": total, "server": final}


def baseline_generate(parts: Parts, question: str) -> float:
    """Generation alone on the exact prompt the pipeline built: the floor a turn cannot beat.

    It goes to the scheduler, whose thread owns the cores (engine.threads); a thread of
    its own would share them with the scheduler's thread pool and run slower.
    """
    turn = parts.pipeline.prepare(TurnRequest(question))
    request = GenerationRequest(turn.messages, parts.engine.ensure(turn.manifest), turn.options)
    started = time.perf_counter()
    parts.scheduler.generate(request)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=10, help="Chat turns measured (after one warm-up turn).")
    parser.add_argument("--tokens", type=int, default=32, help="Tokens generated per answer.")
    parser.add_argument("--base-model", default=None, help="Any Hugging Face id or folder (default: packaged SmolLM2).")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    reserve_for_workers()  # as switchboard serve does, before the models load

    home = Path(tempfile.mkdtemp(prefix="bench-chat-"))
    print(f"preparing a server on {home} ...", file=sys.stderr)
    parts = build_parts(home, args.base_model, args.device, args.tokens)

    turns, baseline = measure_turns(parts, args.turns)
    rows = [("time to first token", [t["ttft"] * 1000 for t in turns]), ("total turn (client)", [t["total"] * 1000 for t in turns])]
    rows += [(f"  stage: {stage}", [t["server"]["timings_ms"][stage] for t in turns]) for stage in STAGES]
    rows.append(("outside generation", outside_ms(turns)))
    rows.append(("baseline: generation alone", [b * 1000 for b in baseline]))

    device = parts.engine.device
    print(f"\nchat turn over HTTP, {args.turns} turns, {args.tokens} tokens each, model=auto, device={device}\n")
    print(f"| {'measure':<34} | {'p50 ms':>10} | {'p95 ms':>10} |")
    print(f"|{'-' * 36}|{'-' * 12}|{'-' * 12}|")
    for name, values in rows:
        print(f"| {name:<34} | {statistics.median(values):>10.1f} | {percentile(values, 0.95):>10.1f} |")
    share = outside_share(turns)
    ratio = statistics.median([t["total"] for t in turns]) / statistics.median(baseline)
    verdict = "meets" if share < TARGET_OUTSIDE_SHARE else "misses"
    print(f"\nshare of the turn outside generation (median): {share:.1%} ({verdict} the {TARGET_OUTSIDE_SHARE:.0%} target)")
    print(f"turn over HTTP / generation alone (medians): {ratio:.3f}x")


def measure_turns(parts: Parts, count: int) -> tuple[list[dict], list[float]]:
    """``count`` streamed turns over HTTP, each followed by generation alone on its prompt (the baseline)."""
    asked = questions(count + 1)
    turns, baseline = [], []
    with serving(create_app(parts)) as url, httpx.Client(base_url=url, timeout=600) as client:
        stream_turn(client, asked[0])  # warm-up: first-use costs (tokenizer caches, lexical indexes)
        for number, question in enumerate(asked[1:], start=1):  # interleaved, so both see the same machine load
            turns.append(stream_turn(client, question))
            baseline.append(baseline_generate(parts, question))
            print(f"turn {number}/{count}: {turns[-1]['total']:.2f}s, generation alone {baseline[-1]:.2f}s", file=sys.stderr)
    return turns, baseline


def outside_ms(turns: list[dict]) -> list[float]:
    """Each turn's time outside generation: routing, retrieval, prompt building, the log, HTTP and SSE."""
    return [t["total"] * 1000 - t["server"]["timings_ms"]["generate"] for t in turns]


def outside_share(turns: list[dict]) -> float:
    """The median share of a turn spent outside generation (the target: under TARGET_OUTSIDE_SHARE)."""
    return statistics.median([o / (t["total"] * 1000) for o, t in zip(outside_ms(turns), turns)])


if __name__ == "__main__":
    main()
