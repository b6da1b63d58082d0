"""Serving under load: concurrent chats across adapters over HTTP, batched vs one at a time.

    .venv/bin/python bench/serving.py [--rounds 5] [--seconds 10] [--tokens 32] [--plot artifacts/serving.png]

A live server (API and UI, as ``switchboard serve`` runs it) on a temporary
home, with random-weight adapters shaped like the ones ``switchboard train``
makes (the recipe's rank on every projection). Requests set ``ignore_eos``
(vLLM's extension), so every request, on an adapter or the bare base,
generates exactly ``--tokens`` tokens. Closed-loop
clients on loopback, in a process of their own (:mod:`bench.load`), stream
``/v1/chat/completions`` back to back, each for ``--seconds``; tokens are counted inside that window (a request that straddles
its edge counts pro rata) and latencies over the requests that started in it.

Every figure is a ratio to a baseline measured in the same run, on the same
server: the scheduler with batching off (one request at a time), the bare
base, one adapter, four registered adapters, a resident adapter. The loads
run in rounds, each round every load once and every other round in reverse
order (so a machine whose speed drifts does not favour the loads that come
first); a ratio is taken within a round and the median over rounds is reported
with each round's value, so a slow minute on a shared machine moves one round,
not the verdict.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.load import Load, LoadGenerator, RoundRobin, Zipf, chat  # noqa: E402
from bench.prompts import PROMPTS  # noqa: E402
from bot.api.app import create_app  # noqa: E402
from bot.api.server import serving  # noqa: E402
from bot.parts import Parts  # noqa: E402
from core.settings import load_settings  # noqa: E402
from engine.base_model import resolve_base_model  # noqa: E402
from engine.threads import reserve_for_workers  # noqa: E402
from training.recipe import Recipe  # noqa: E402

CLIENTS = (1, 4, 8, 16)
SERVED = 4  # adapters the main load is spread over
REGISTERED = 64  # adapters registered for the many-adapters run


# ---- the server ----------------------------------------------------------------------------------


def make_adapters(parts: Parts, home: Path, count: int) -> list[str]:
    """Install ``count`` random adapters shaped like a trained one; the first few are made, the rest re-seeded."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig

    from training.random_adapter import make_random_adapter

    recipe = Recipe()
    config = AutoConfig.from_pretrained(resolve_base_model(parts.settings))
    names = []
    for i in range(count):
        folder = home / "uploads" / f"lora{i}"
        if i < SERVED:
            make_random_adapter(config, folder, seed=i, rank=recipe.rank, targets=tuple(recipe.target_modules))
        else:  # same shapes and spread as the made ones, new values: much faster than building a model each time
            source = home / "uploads" / f"lora{i % SERVED}"
            generator = torch.Generator().manual_seed(i)
            tensors = load_file(str(source / "adapter_model.safetensors"))
            folder.mkdir(parents=True)
            shutil.copyfile(source / "adapter_config.json", folder / "adapter_config.json")
            save_file(
                {k: torch.randn(t.shape, generator=generator) * t.std() for k, t in tensors.items()},
                str(folder / "adapter_model.safetensors"),
            )
        name = f"svc{i:02d}"
        parts.registry.install(folder, name, description=f"benchmark adapter {i}")
        names.append(name)
    return names


@contextmanager
def enabled(parts: Parts, names: list[str]) -> Iterator[None]:
    """The adapters registered only for the many-adapters loads, enabled within the block."""
    for name in names:
        parts.registry.set_status(name, "enabled")
    try:
        yield
    finally:
        for name in names:
            parts.registry.set_status(name, "disabled")


# ---- a cold adapter ------------------------------------------------------------------------------


def cold_start(parts: Parts, url: str, names: list[str], tokens: int, rounds: int) -> tuple[float, float]:
    """Median time to first token for a resident adapter and for one that is not resident (one request alone)."""
    warm_ttft, cold_ttft = [], []
    with httpx.Client(base_url=url, timeout=600) as client:
        for i in range(rounds):
            resident = set(parts.engine.resident_adapters)
            cold = next(n for n in reversed(names) if not any(k.startswith(f"{n}__") for k in resident))
            hot = next(n for n in names if any(k.startswith(f"{n}__") for k in resident))
            warm_request = chat(client, hot, PROMPTS[i % len(PROMPTS)], tokens)
            cold_request = chat(client, cold, PROMPTS[i % len(PROMPTS)], tokens)
            warm_ttft.append(warm_request.first_token - warm_request.started)
            cold_ttft.append(cold_request.first_token - cold_request.started)
    return statistics.median(warm_ttft), statistics.median(cold_ttft)


# ---- report --------------------------------------------------------------------------------------


def print_header() -> None:
    print(
        f"| {'round':>5} | {'load':<34} | {'C':>3} | {'tok/s':>8} | {'req/s':>6} | {'TTFT50':>7} | {'TTFT95':>7} "
        f"| {'lat50':>7} | {'lat95':>7} | {'n':>4} |"
    )
    print(f"|{'-' * 7}|{'-' * 36}|{'-' * 5}|{'-' * 10}|{'-' * 8}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 6}|")


def print_row(number: int, load: Load) -> None:
    print(
        f"| {number:>5} | {load.label:<34} | {load.clients:>3} | {load.tokens_per_second():>8.1f} | {load.requests_per_second():>6.2f} "
        f"| {load.ttft(0.5) * 1000:>7.0f} | {load.ttft(0.95) * 1000:>7.0f} "
        f"| {load.latency(0.5) * 1000:>7.0f} | {load.latency(0.95) * 1000:>7.0f} | {len(load.started_inside()):>4} |",
        flush=True,
    )


def plot(path: Path, rounds: list[dict[str, Load]]) -> None:
    """Throughput and p95 latency against C, each point the median over rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def median(key: str, figure) -> float:
        return statistics.median(figure(loads[key]) for loads in rounds)

    throughput, p95 = Load.tokens_per_second, lambda load: load.latency(0.95)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(CLIENTS, [median(f"C={c}", throughput) for c in CLIENTS], "o-", label="continuous batching")
    left.axhline(median("baseline", throughput), color="grey", linestyle="--", label="one at a time (batching off)")
    left.set(xlabel="concurrent clients", ylabel="generated tokens/s", title="Throughput", xticks=CLIENTS)
    left.legend()
    right.plot(CLIENTS, [median(f"C={c}", p95) for c in CLIENTS], "o-", label="p95 latency, batching")
    single = median("C=1", lambda load: load.latency(0.5))
    right.axhline(2 * single, color="grey", linestyle="--", label="2 x single-request latency")
    right.set(xlabel="concurrent clients", ylabel="seconds", title="p95 request latency", xticks=CLIENTS)
    right.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="Measured window of each load.")
    parser.add_argument("--rounds", type=int, default=5, help="Times every load is measured; ratios are medians.")
    parser.add_argument("--warmup", type=float, default=2.0, help="Seconds of each load before the window opens.")
    parser.add_argument("--tokens", type=int, default=32, help="Tokens generated per request.")
    parser.add_argument("--cold-rounds", type=int, default=5, help="Cold/warm request pairs for the cold-adapter cost.")
    parser.add_argument("--plot", type=Path, default=ROOT / "artifacts" / "serving.png", help="Where the PNG goes.")
    parser.add_argument("--base-model", default=None, help="Any Hugging Face id or folder (default: packaged SmolLM2).")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    reserve_for_workers()  # as switchboard serve does, before the models load

    home = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    try:
        settings = load_settings({"home": home, "base_model": args.base_model, "device": args.device}, environ={})
        parts = Parts(settings)
        print(f"preparing a server with {REGISTERED} adapters on {home} ...", file=sys.stderr, flush=True)
        names = make_adapters(parts, home, REGISTERED)
        served, tail = names[:SERVED], names[SERVED:]
        for name in tail:  # registered for the many-adapters load only
            parts.registry.set_status(name, "disabled")
        parts.warm()
        with serving(create_app(parts)) as url:
            run(parts, url, served, tail, args)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def measure_round(
    parts: Parts, url: str, served: list[str], tail: list[str], generator: LoadGenerator, args, reverse: bool
) -> dict[str, Load]:
    """Every load once, back to back (in reverse order when ``reverse``); C=8 sits next to most loads it is compared with."""
    config = parts.settings.scheduler
    load = lambda label, clients, models: generator.measure(  # noqa: E731
        url, label, clients, models, args.seconds, args.tokens, args.warmup
    )
    spread = RoundRobin(tuple(served))
    resident = parts.settings.max_resident_adapters

    def one_at_a_time() -> Load:  # the baseline: the same server deciding one request at a time
        config.batching = False
        try:
            return load("one at a time (batching off)", 8, spread)
        finally:
            config.batching = True

    def many_adapters() -> Load:
        with enabled(parts, tail):
            return load(f"batched, {REGISTERED} adapters zipf, {resident} resident", 8, Zipf((*served, *tail)))

    loads = {
        "baseline": one_at_a_time,
        "C=1": lambda: load(f"batched, {SERVED} adapters", 1, spread),
        "bare": lambda: load("batched, bare base (no adapter)", 8, RoundRobin(("base",))),
        "C=8": lambda: load(f"batched, {SERVED} adapters", 8, spread),
        "single": lambda: load("batched, 1 adapter", 8, RoundRobin(tuple(served[:1]))),
        "zipf": many_adapters,
    }
    for clients in CLIENTS:  # the rest of the throughput and latency curve
        loads.setdefault(f"C={clients}", lambda clients=clients: load(f"batched, {SERVED} adapters", clients, spread))
    order = list(loads)[::-1] if reverse else list(loads)
    return {key: loads[key]() for key in order}


def ratios(loads: dict[str, Load]) -> list[tuple[str, float, str, float]]:
    """The issue's targets as (name, value, comparison, target), each a ratio within one round."""
    at8 = loads["C=8"]
    return [
        ("throughput C=8 / one at a time", at8.tokens_per_second() / loads["baseline"].tokens_per_second(), ">=", 3.0),
        ("p95 latency C=8 / single request", at8.latency(0.95) / loads["C=1"].latency(0.5), "<=", 2.0),
        ("LoRA: all on adapters / bare base", at8.tokens_per_second() / loads["bare"].tokens_per_second(), ">=", 0.8),
        ("mix: 4 adapters / 1 adapter", at8.tokens_per_second() / loads["single"].tokens_per_second(), ">=", 0.7),
        (f"{REGISTERED} zipf / {SERVED} registered", loads["zipf"].tokens_per_second() / at8.tokens_per_second(), ">=", 0.9),
    ]


def run(parts: Parts, url: str, served: list[str], tail: list[str], args) -> None:
    config = parts.settings.scheduler
    with httpx.Client(base_url=url, timeout=600) as client:  # warm-up: first-use costs of every served adapter
        for name in [*served, "base"]:
            chat(client, name, PROMPTS[0], 4)

    print(
        f"\nserving over HTTP: {SERVED} adapters (rank {Recipe().rank}, all projections), {args.tokens} tokens a request, "
        f"{args.seconds:.0f}s windows, {args.rounds} rounds, max_batch_size={config.max_batch_size}, "
        f"device={parts.engine.device}\n"
    )
    print_header()
    rounds: list[dict[str, Load]] = []
    generator = LoadGenerator()
    try:
        for number in range(1, args.rounds + 1):
            rounds.append(measure_round(parts, url, served, tail, generator, args, reverse=number % 2 == 0))
            for load in rounds[-1].values():
                print_row(number, load)
    finally:
        generator.close()
    with enabled(parts, tail):
        warm_ttft, cold_ttft = cold_start(parts, url, [*served, *tail], args.tokens, args.cold_rounds)
    reloads = parts.engine.adapter_load_seconds
    print(
        f"\ncold adapter: TTFT {cold_ttft * 1000:.0f} ms vs {warm_ttft * 1000:.0f} ms resident "
        f"(adapter loads this run: {len(reloads)}, median {statistics.median(reloads) * 1000:.0f} ms; "
        f"slot gathers: {parts.engine.slot_gathers})"
    )

    per_round = [ratios(loads) for loads in rounds]
    checks = [
        (name, [r[i][1] for r in per_round], op, target) for i, (name, _, op, target) in enumerate(per_round[0])
    ]
    checks.append(("cold adapter: extra TTFT (s)", [cold_ttft - warm_ttft], "<", 1.0))
    print(f"\n| {'ratio (median of rounds)':<36} | {'value':>7} | {'rounds':<24} | {'target':>8} | {'':4} |")
    print(f"|{'-' * 38}|{'-' * 9}|{'-' * 26}|{'-' * 10}|{'-' * 6}|")
    for name, values, op, target in checks:
        value = statistics.median(values)
        ok = value >= target if op == ">=" else value <= target if op == "<=" else value < target
        spread = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {name:<36} | {value:>7.2f} | {spread:<24} | {op:>2} {target:<5} | {'ok' if ok else 'MISS':4} |")
    plot(args.plot, rounds)
    print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
