"""Engines side by side: Switchboard on its embedded engine, Switchboard on vLLM, and vLLM alone.

    .venv/bin/python bench/engines.py [--rounds 3] [--seconds 10] [--tokens 32] [--vllm-url URL]

The same closed-loop loads (:mod:`bench.load`, clients in a process of their
own) over 4 random-weight adapters shaped like trained ones, at C = 1, 4, 8
and 16 clients, against three servers in one run:

- (a) Switchboard with the embedded engine (the product's default: 4-bit NF4 base);
- (b) Switchboard with ``engine.backend = "vllm"``, in front of the vLLM server;
- (c) that vLLM server directly, asked for the same adapters and chats (its own
  ``/v1/chat/completions``; the chat template renders the same prompt).

Requests set ``ignore_eos``, so each generates exactly ``--tokens`` tokens.
b/c is Switchboard's overhead in front of vLLM (goal: throughput >= 0.9x,
p95 latency <= 1.15x); a/c is how the embedded engine stands against vLLM on
this machine. Ratios are taken within a round; the median over rounds is
reported. Without ``--vllm-url`` a vLLM server (the CPU build in
``.venv-vllm``, float32 base) is started for the run.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.load import Load, LoadGenerator, RoundRobin, chat  # noqa: E402
from bench.prompts import PROMPTS  # noqa: E402
from bench.serving import SERVED, make_adapters, print_header, print_row  # noqa: E402
from bot.api.app import create_app  # noqa: E402
from bot.api.server import serving  # noqa: E402
from bot.parts import Parts  # noqa: E402
from core.settings import load_settings  # noqa: E402
from engine.base_model import resolve_base_model  # noqa: E402
from engine.threads import reserve_for_workers  # noqa: E402
from engine.vllm.process import VLLMProcess  # noqa: E402

CLIENTS = (1, 4, 8, 16)
SYSTEMS = {"a": "Switchboard, embedded engine", "b": "Switchboard on vLLM", "c": "vLLM alone"}


def switchboard(home: Path, args, **overrides) -> Parts:
    return Parts(load_settings({"home": home, "base_model": args.base_model, **overrides}, environ={}))


def measure_round(generator: LoadGenerator, urls: dict[str, str], models: dict[str, tuple[str, ...]], args, reverse: bool):
    """Every system at every C once; every other round in reverse order, so drift favours no system."""
    keys = [(system, clients) for clients in CLIENTS for system in SYSTEMS]
    results = {}
    for system, clients in keys[::-1] if reverse else keys:
        label = f"({system}) {SYSTEMS[system]}"
        results[system, clients] = generator.measure(
            urls[system], label, clients, RoundRobin(models[system]), args.seconds, args.tokens, args.warmup
        )
    return results


def report(rounds: list[dict]) -> None:
    def ratio(top: str, bottom: str, clients: int, figure) -> list[float]:
        return [figure(r[top, clients]) / figure(r[bottom, clients]) for r in rounds]

    throughput, p95 = Load.tokens_per_second, lambda load: load.latency(0.95)
    print(f"\n| {'C':>3} | {'b/c tok/s':>9} | {'b/c p95':>8} | {'a/c tok/s':>9} | {'a/c p95':>8} | {'a tok/s':>8} | {'b tok/s':>8} | {'c tok/s':>8} |")
    print(f"|{'-' * 5}|{'-' * 11}|{'-' * 10}|{'-' * 11}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    for clients in CLIENTS:
        tok = {s: statistics.median(throughput(r[s, clients]) for r in rounds) for s in SYSTEMS}
        print(
            f"| {clients:>3} | {statistics.median(ratio('b', 'c', clients, throughput)):>9.2f} "
            f"| {statistics.median(ratio('b', 'c', clients, p95)):>8.2f} "
            f"| {statistics.median(ratio('a', 'c', clients, throughput)):>9.2f} "
            f"| {statistics.median(ratio('a', 'c', clients, p95)):>8.2f} "
            f"| {tok['a']:>8.1f} | {tok['b']:>8.1f} | {tok['c']:>8.1f} |"
        )
    print("\ngoals: b/c throughput >= 0.90x and p95 <= 1.15x (Switchboard's overhead); a/c reported (goal >= 1x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="Measured window of each load.")
    parser.add_argument("--rounds", type=int, default=3, help="Times every load is measured; ratios are medians.")
    parser.add_argument("--warmup", type=float, default=2.0, help="Seconds of each load before the window opens.")
    parser.add_argument("--tokens", type=int, default=32, help="Tokens generated per request.")
    parser.add_argument("--base-model", default=None, help="Any Hugging Face id or folder (default: packaged SmolLM2).")
    parser.add_argument("--vllm-url", default=None, help="A vLLM server already serving --base-model (a GPU's).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    reserve_for_workers()

    home = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    server = None
    try:
        embedded = switchboard(home / "a", args)
        if args.vllm_url is None:
            print("starting a vLLM server (about a minute) ...", file=sys.stderr, flush=True)
            server = VLLMProcess(Path(resolve_base_model(embedded.settings)), home / "vllm.log").start().wait()
        url = args.vllm_url or server.url
        on_vllm = switchboard(home / "b", args, engine={"backend": "vllm", "url": url})
        names = make_adapters(embedded, home / "a", SERVED)
        make_adapters(on_vllm, home / "b", SERVED)  # the same seeds: the same weights
        embedded.warm()
        on_vllm.warm()
        keys = tuple(on_vllm.registry.get(name).key for name in names)
        with serving(create_app(embedded)) as a, serving(create_app(on_vllm)) as b:
            urls, models = {"a": a, "b": b, "c": url}, {"a": tuple(names), "b": tuple(names), "c": keys}
            run(urls, models, args)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(home, ignore_errors=True)


def run(urls: dict[str, str], models: dict[str, tuple[str, ...]], args) -> None:
    for system, url in urls.items():  # warm-up: first-use costs of every adapter on every server
        with httpx.Client(base_url=url, timeout=600) as client:
            for model in models[system]:
                chat(client, model, PROMPTS[0], 4)
    print(f"\n{SERVED} adapters, {args.tokens} tokens a request, {args.seconds:.0f}s windows, {args.rounds} rounds\n")
    print_header()
    generator = LoadGenerator()
    rounds = []
    try:
        for number in range(1, args.rounds + 1):
            rounds.append(measure_round(generator, urls, models, args, reverse=number % 2 == 0))
            for load in rounds[-1].values():
                print_row(number, load)
    finally:
        generator.close()
    report(rounds)


if __name__ == "__main__":
    main()
