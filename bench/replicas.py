"""Shared state and replicas: the cost of PostgreSQL and a Chroma server per turn, and what a second replica adds.

    .venv/bin/python bench/replicas.py [--turns 10] [--seconds 10] [--rounds 3] [--clients 8]

One run starts real servers on loopback ports (a throwaway PostgreSQL 15 cluster, ``chroma run``, a vLLM
server from ``.venv-vllm``) and measures, against baselines taken in the same run:

1. the share of a chat turn outside generation (routing, retrieval, prompt, the log, HTTP; ``bench/chat.py``'s
   measure) with the embedded defaults (SQLite, embedded Chroma) and with the shared parts (the log on
   PostgreSQL, knowledge on the Chroma server). Target: under 10% with the shared parts.
2. requests per second of two ``switchboard serve`` replicas against one, both in front of the one vLLM
   server, in closed loop with ``max_tokens`` 1, so that generation is not what limits them. Target: two
   replicas serve at least 1.8x the requests of one. Each replica is a process of its own, as in production.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's real servers: PostgreSQL and Chroma

from bench.chat import TARGET_OUTSIDE_SHARE, build_parts, measure_turns, outside_ms, outside_share  # noqa: E402
from bench.chat import install_demo as chat_demo  # noqa: E402
from bench.load import LoadGenerator, RoundRobin  # noqa: E402
from bench.serving import print_header, print_row  # noqa: E402
from cli import kill, serve  # noqa: E402
from postgres import Postgres  # noqa: E402
from servers import ChromaServer  # noqa: E402

from core.settings import load_settings  # noqa: E402
from engine.base_model import resolve_base_model  # noqa: E402
from engine.threads import reserve_for_workers  # noqa: E402
from engine.vllm.process import VLLMProcess  # noqa: E402

TARGET_SCALE = 1.8


def share_table(args, home: Path, postgres: Postgres, chroma: ChromaServer) -> None:
    """Part 1: the turn's share outside generation, embedded defaults against the shared parts."""
    setups = {
        "embedded defaults (SQLite, embedded Chroma)": {},
        "shared parts (PostgreSQL, Chroma server)": {
            "database_url": postgres.new_database(), "knowledge": {"chroma_url": chroma.url}},
    }
    results = {}
    for label, overrides in setups.items():
        print(f"preparing {label} ...", file=sys.stderr, flush=True)
        parts = build_parts(home / f"share-{len(results)}", None, "auto", args.tokens, **overrides)
        results[label] = measure_turns(parts, args.turns)
        parts.knowledge.close()
    print(f"\n1. a chat turn over HTTP, {args.turns} turns of {args.tokens} tokens, model=auto, embedded engine\n")
    print(f"| {'setup':<44} | {'turn p50 ms':>11} | {'outside p50 ms':>14} | {'outside share':>13} |")
    print(f"|{'-' * 46}|{'-' * 13}|{'-' * 16}|{'-' * 15}|")
    for label, (turns, _) in results.items():
        total = statistics.median(t["total"] * 1000 for t in turns)
        outside = statistics.median(outside_ms(turns))
        print(f"| {label:<44} | {total:>11.1f} | {outside:>14.1f} | {outside_share(turns):>13.1%} |")
    (embedded, _), (shared, _) = results.values()
    share = outside_share(shared)
    ratio = statistics.median(outside_ms(shared)) / statistics.median(outside_ms(embedded))
    verdict = "meets" if share < TARGET_OUTSIDE_SHARE else "misses"
    print(f"\nshared parts: {share:.1%} of a turn outside generation ({verdict} the {TARGET_OUTSIDE_SHARE:.0%} target); "
          f"time outside generation, shared / embedded (medians): {ratio:.2f}x")


def install_demo(home: Path, base_model: Path, shared: dict[str, str]) -> None:
    """The demo adapters in the shared registry, and their documents on the Chroma server."""
    from bot.parts import Parts

    parts = Parts(load_settings({
        "home": home, "base_model": str(base_model), "database_url": shared["DATABASE_URL"],
        "registry_dir": shared["REGISTRY_DIR"], "knowledge": {"chroma_url": shared["KNOWLEDGE__CHROMA_URL"]},
    }, environ={}))
    chat_demo(parts, home / "uploads")
    parts.knowledge.close()


def scale_table(args, home: Path, postgres: Postgres, chroma: ChromaServer) -> None:
    """Part 2: one replica against two, in front of one vLLM server, generation cut to one token."""
    base_model = Path(resolve_base_model(load_settings({"home": home / "base"}, environ={})))
    print("starting a vLLM server (about a minute) ...", file=sys.stderr, flush=True)
    engine = VLLMProcess(base_model, home / "vllm.log").start().wait()
    shared = {
        "DATABASE_URL": postgres.new_database(), "KNOWLEDGE__CHROMA_URL": chroma.url,
        "REGISTRY_DIR": str(home / "shared-adapters"), "ENGINE__BACKEND": "vllm", "ENGINE__URL": engine.url,
        "ADMIN_TOKEN": "bench-replicas",
    }
    replicas = []
    try:
        install_demo(home / "installer", base_model, shared)
        print("starting two replicas ...", file=sys.stderr, flush=True)
        with ThreadPoolExecutor(2) as pool:
            replicas = list(pool.map(lambda n: serve(home / f"replica-{n}", base_model, **shared), range(2)))
        urls = [url for _, url, _ in replicas]
        setups = {"one replica": urls[:1], "two replicas": urls}
        traffic = RoundRobin((args.model,))
        generator = LoadGenerator()
        rounds = []
        print(f"\n2. closed loop, C={args.clients}, model={args.model}, 1 token a request, {args.seconds:.0f}s windows, "
              f"{args.rounds} rounds\n")
        print_header()
        processes = {"replicas": [p.pid for p, _, _ in replicas], "vLLM": [engine.process.pid]}
        cpu: dict[str, list[float]] = {part: [] for part in processes}  # CPU ms per request, every load
        try:
            generator.measure(urls, "warm-up", args.clients, traffic, 3, 1, 0)
            for number in range(1, args.rounds + 1):
                order = list(setups.items())[:: 1 if number % 2 else -1]  # drift favours neither
                loads = {}
                for label, target in order:
                    before = {part: cpu_seconds(pids) for part, pids in processes.items()}
                    loads[label] = generator.measure(target, label, args.clients, traffic, args.seconds, 1, args.warmup)
                    for part, pids in processes.items():
                        cpu[part].append((cpu_seconds(pids) - before[part]) * 1000 / len(loads[label].requests))
                for load in loads.values():
                    print_row(number, load)
                rounds.append(loads)
        finally:
            generator.close()
        ratios = [r["two replicas"].requests_per_second() / r["one replica"].requests_per_second() for r in rounds]
        one = statistics.median(r["one replica"].requests_per_second() for r in rounds)
        two = statistics.median(r["two replicas"].requests_per_second() for r in rounds)
        verdict = "meets" if statistics.median(ratios) >= TARGET_SCALE else "misses"
        print(f"\nreq/s (medians): one replica {one:.2f}, two replicas {two:.2f}; two / one: "
              f"{statistics.median(ratios):.2f}x ({verdict} the {TARGET_SCALE}x target)")
        per_request = ", ".join(f"{part} {statistics.median(values):.0f} ms" for part, values in cpu.items())
        print(f"CPU time per request (medians): {per_request}, on {os.cpu_count()} cores shared by all of them "
              "and the load generator: where the vLLM server's share is the larger, generation is what limits, "
              "and a second replica cannot add requests")
    finally:
        for process, _, _ in replicas:
            kill(process)
        engine.stop()


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU of these processes and their children so far (vLLM runs its engine in a child)."""
    import psutil

    total = 0.0
    for pid in pids:
        process = psutil.Process(pid)
        for member in [process, *process.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = member.cpu_times()
                total += times.user + times.system
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=10, help="Chat turns measured per setup in part 1.")
    parser.add_argument("--tokens", type=int, default=32, help="Tokens generated per answer in part 1.")
    parser.add_argument("--seconds", type=float, default=10.0, help="Measured window of each load in part 2.")
    parser.add_argument("--warmup", type=float, default=2.0, help="Seconds of each load before its window opens.")
    parser.add_argument("--rounds", type=int, default=3, help="Times each load of part 2 is measured.")
    parser.add_argument("--clients", type=int, default=8, help="Closed-loop clients in part 2.")
    parser.add_argument("--model", default="auto", help="What part 2 asks for: auto (routing and retrieval, a "
                        "prompt with sources) or base (a short prompt: the least generation can cost).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    reserve_for_workers()

    home = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    postgres = Postgres().start()
    chroma = ChromaServer(home / "chroma-server").start()
    try:
        share_table(args, home, postgres, chroma)
        scale_table(args, home, postgres, chroma)
    finally:
        chroma.stop()
        postgres.close()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
