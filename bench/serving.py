"""Serving under load: concurrent chats across adapters over HTTP, batched vs one at a time.

    .venv/bin/python bench/serving.py [--seconds 15] [--tokens 32] [--plot artifacts/serving.png]

A live server (API and UI, as ``switchboard serve`` runs it) on a temporary
home, with random-weight adapters shaped like the ones ``switchboard train``
makes (the recipe's rank on every projection). Requests set ``ignore_eos``
(vLLM's extension), so every request, on an adapter or the bare base,
generates exactly ``--tokens`` tokens. Closed-loop
clients on loopback stream ``/v1/chat/completions`` back to back, each for
``--seconds``; tokens are counted inside that window (a request that straddles
its edge counts pro rata) and latencies over the requests that started in it.

Every figure is a ratio to a baseline measured in the same run, on the same
server: the scheduler with batching off (one request at a time), the bare
base, one adapter, four registered adapters, a resident adapter.
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.common import PROMPTS, sse_chunks  # noqa: E402
from bot.api import create_app, warm  # noqa: E402
from bot.base_model import resolve_base_model  # noqa: E402
from bot.cores import reserve_for_workers  # noqa: E402
from bot.runtime import Runtime  # noqa: E402
from bot.settings import load_settings  # noqa: E402
from training.recipe import Recipe  # noqa: E402

CLIENTS = (1, 4, 8, 16)
SERVED = 4  # adapters the main load is spread over
REGISTERED = 64  # adapters registered for the many-adapters run
ZIPF_S = 1.0


@dataclass
class Request:
    started: float
    first_token: float
    finished: float
    tokens: int


@dataclass
class Load:
    label: str
    clients: int
    requests: list[Request]
    window: tuple[float, float]

    @property
    def seconds(self) -> float:
        return self.window[1] - self.window[0]

    def tokens_per_second(self) -> float:
        """Tokens generated inside the window; each request's tokens are spread evenly from first token to end."""
        low, high = self.window
        total = 0.0
        for r in self.requests:
            span = max(r.finished - r.first_token, 1e-9)
            overlap = max(0.0, min(r.finished, high) - max(r.first_token, low))
            total += r.tokens * overlap / span
        return total / self.seconds

    def requests_per_second(self) -> float:
        return sum(self.window[0] <= r.finished <= self.window[1] for r in self.requests) / self.seconds

    def started_inside(self) -> list[Request]:
        return [r for r in self.requests if self.window[0] <= r.started < self.window[1]] or self.requests

    def latency(self, q: float) -> float:
        return percentile([r.finished - r.started for r in self.started_inside()], q)

    def ttft(self, q: float) -> float:
        return percentile([r.first_token - r.started for r in self.started_inside()], q)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# ---- the server ----------------------------------------------------------------------------------


def make_adapters(runtime: Runtime, home: Path, count: int) -> list[str]:
    """Install ``count`` random adapters shaped like a trained one; the first few are made, the rest re-seeded."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig

    from training.random_adapter import make_random_adapter

    recipe = Recipe()
    config = AutoConfig.from_pretrained(resolve_base_model(runtime.settings))
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
        runtime.registry.install(folder, name, description=f"benchmark adapter {i}")
        names.append(name)
    return names


def start_server(runtime: Runtime):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(runtime), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


# ---- the clients ---------------------------------------------------------------------------------


def chat(client: httpx.Client, model: str, prompt: str, tokens: int) -> Request:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first, generated = None, 0
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.read().decode()[:200]}")
        for chunk in sse_chunks(response):
            if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
            if chunk.get("usage"):
                generated = chunk["usage"]["completion_tokens"]
    finished = time.perf_counter()
    return Request(started, first or finished, finished, generated)


def closed_loop(url: str, label: str, clients: int, models, seconds: float, tokens: int, warmup: float) -> Load:
    """``clients`` users, each sending its next request as soon as the last one finished, for ``seconds``."""
    records: list[Request] = []
    lock = threading.Lock()
    failures: list[BaseException] = []
    start = time.perf_counter()
    stop_at = start + warmup + seconds

    def user(index: int) -> None:
        turn = 0
        with httpx.Client(base_url=url, timeout=600) as client:
            while time.perf_counter() < stop_at and not failures:
                try:
                    record = chat(client, models(index, turn), PROMPTS[(index + turn) % len(PROMPTS)], tokens)
                except Exception as exc:  # reported once the load ends
                    failures.append(exc)
                    return
                with lock:
                    records.append(record)
                turn += 1

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"{label}: a request failed: {failures[0]}")
    return Load(label, clients, records, (start + warmup, stop_at))


def round_robin(names: list[str]):
    return lambda index, turn: names[(index + turn) % len(names)]


def zipf(names: list[str], seed: int = 0):
    """Adapter popularity falling as 1/rank**s: a few are hot, most are rarely asked for."""
    weights = [1 / (rank + 1) ** ZIPF_S for rank in range(len(names))]
    draws = random.Random(seed).choices(names, weights, k=100_000)
    return lambda index, turn: draws[(index * 7919 + turn) % len(draws)]


def cold_start(runtime: Runtime, url: str, names: list[str], tokens: int, rounds: int) -> tuple[float, float]:
    """Median time to first token for a resident adapter and for one that is not resident (one request alone)."""
    warm_ttft, cold_ttft = [], []
    with httpx.Client(base_url=url, timeout=600) as client:
        for i in range(rounds):
            resident = set(runtime.engine.resident_adapters)
            cold = next(n for n in reversed(names) if not any(k.startswith(f"{n}__") for k in resident))
            hot = next(n for n in names if any(k.startswith(f"{n}__") for k in resident))
            warm_request = chat(client, hot, PROMPTS[i % len(PROMPTS)], tokens)
            cold_request = chat(client, cold, PROMPTS[i % len(PROMPTS)], tokens)
            warm_ttft.append(warm_request.first_token - warm_request.started)
            cold_ttft.append(cold_request.first_token - cold_request.started)
    return statistics.median(warm_ttft), statistics.median(cold_ttft)


# ---- report --------------------------------------------------------------------------------------


def print_row(load: Load) -> None:
    print(
        f"| {load.label:<34} | {load.clients:>3} | {load.tokens_per_second():>8.1f} | {load.requests_per_second():>6.2f} "
        f"| {load.ttft(0.5) * 1000:>7.0f} | {load.ttft(0.95) * 1000:>7.0f} "
        f"| {load.latency(0.5) * 1000:>7.0f} | {load.latency(0.95) * 1000:>7.0f} | {len(load.started_inside()):>4} |",
        flush=True,
    )


def plot(path: Path, batched: list[Load], baseline: Load, single_latency: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients = [load.clients for load in batched]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(clients, [load.tokens_per_second() for load in batched], "o-", label="continuous batching")
    left.axhline(baseline.tokens_per_second(), color="grey", linestyle="--", label="one at a time (batching off)")
    left.set(xlabel="concurrent clients", ylabel="generated tokens/s", title="Throughput", xticks=clients)
    left.legend()
    right.plot(clients, [load.latency(0.95) for load in batched], "o-", label="p95 latency, batching")
    right.axhline(2 * single_latency, color="grey", linestyle="--", label="2 x single-request latency")
    right.set(xlabel="concurrent clients", ylabel="seconds", title="p95 request latency", xticks=clients)
    right.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="Measured window of each load.")
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
        runtime = Runtime(settings)
        print(f"preparing a server with {REGISTERED} adapters on {home} ...", file=sys.stderr, flush=True)
        names = make_adapters(runtime, home, REGISTERED)
        served, tail = names[:SERVED], names[SERVED:]
        for name in tail:  # registered for the many-adapters load only
            runtime.registry.set_status(name, "disabled")
        warm(runtime)
        server, thread, url = start_server(runtime)
        run(runtime, url, served, tail, args)
        server.should_exit = True
        thread.join(timeout=10)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def run(runtime: Runtime, url: str, served: list[str], tail: list[str], args) -> None:
    config = runtime.settings.scheduler
    load = lambda label, clients, models: closed_loop(  # noqa: E731
        url, label, clients, models, args.seconds, args.tokens, args.warmup
    )
    with httpx.Client(base_url=url, timeout=600) as client:  # warm-up: first-use costs of every served adapter
        for name in [*served, "base"]:
            chat(client, name, PROMPTS[0], 4)

    print(
        f"\nserving over HTTP: {SERVED} adapters (rank {Recipe().rank}, all projections), {args.tokens} tokens a request, "
        f"{args.seconds:.0f}s windows, max_batch_size={config.max_batch_size}, device={runtime.engine.device}\n"
    )
    print(
        f"| {'load':<34} | {'C':>3} | {'tok/s':>8} | {'req/s':>6} | {'TTFT50':>7} | {'TTFT95':>7} "
        f"| {'lat50':>7} | {'lat95':>7} | {'n':>4} |"
    )
    print(f"|{'-' * 36}|{'-' * 5}|{'-' * 10}|{'-' * 8}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 6}|", flush=True)
    config.batching = False  # the baseline: the same server deciding one request at a time
    baseline = load("one at a time (batching off)", 8, round_robin(served))
    print_row(baseline)
    config.batching = True
    batched = []
    for clients in CLIENTS:
        batched.append(load(f"batched, {SERVED} adapters", clients, round_robin(served)))
        print_row(batched[-1])
    at8 = next(b for b in batched if b.clients == 8)
    bare = load("batched, bare base (no adapter)", 8, round_robin(["base"]))
    print_row(bare)
    single = load("batched, 1 adapter", 8, round_robin(served[:1]))
    print_row(single)
    for name in tail:
        runtime.registry.set_status(name, "enabled")
    many = load(f"batched, {REGISTERED} adapters zipf, {runtime.settings.max_resident_adapters} resident", 8, zipf([*served, *tail]))
    print_row(many)
    warm_ttft, cold_ttft = cold_start(runtime, url, [*served, *tail], args.tokens, args.cold_rounds)
    loads = runtime.engine.adapter_load_seconds
    print(
        f"\ncold adapter: TTFT {cold_ttft * 1000:.0f} ms vs {warm_ttft * 1000:.0f} ms resident "
        f"(adapter loads this run: {len(loads)}, median {statistics.median(loads) * 1000:.0f} ms)"
    )

    single_latency = batched[0].latency(0.5)
    checks = [
        ("throughput C=8 / one at a time", at8.tokens_per_second() / baseline.tokens_per_second(), ">=", 3.0),
        ("p95 latency C=8 / single request", at8.latency(0.95) / single_latency, "<=", 2.0),
        ("LoRA: all on adapters / bare base", at8.tokens_per_second() / bare.tokens_per_second(), ">=", 0.8),
        ("mix: 4 adapters / 1 adapter", at8.tokens_per_second() / single.tokens_per_second(), ">=", 0.7),
        (f"{REGISTERED} zipf / {SERVED} registered", many.tokens_per_second() / at8.tokens_per_second(), ">=", 0.9),
        ("cold adapter: extra TTFT (s)", cold_ttft - warm_ttft, "<", 1.0),
    ]
    print(f"\n| {'ratio':<36} | {'value':>7} | {'target':>8} | {'':4} |")
    print(f"|{'-' * 38}|{'-' * 9}|{'-' * 10}|{'-' * 6}|")
    for name, value, op, target in checks:
        ok = value >= target if op == ">=" else value <= target if op == "<=" else value < target
        print(f"| {name:<36} | {value:>7.2f} | {op:>2} {target:<5} | {'ok' if ok else 'MISS':4} |")
    plot(args.plot, batched, baseline, single_latency)
    print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
