"""The load generator of the serving benchmark: closed-loop chat clients over HTTP.

It runs in a process of its own (:class:`LoadGenerator` starts
``python -m bench.load`` and sends it one load per line), as a load generator
on another machine would: clients in the server's interpreter would take the
GIL from its decoding thread at every streamed token and slow what they
measure. It imports nothing of the product, so that process starts in a second.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import httpx

from bench.prompts import PROMPTS
from bench.sse import sse_chunks

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


# ---- traffic ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundRobin:
    """Client ``index`` asks ``names`` in turn, starting at its own offset."""

    names: tuple[str, ...]

    def __call__(self, index: int, turn: int) -> str:
        return self.names[(index + turn) % len(self.names)]


@dataclass(frozen=True)
class Zipf:
    """Adapter popularity falling as 1/rank**s: a few are hot, most are rarely asked for."""

    names: tuple[str, ...]
    seed: int = 0

    @cached_property
    def draws(self) -> list[str]:
        """100,000 draws, indexed by client and turn; made where the clients run, not where the order is sent."""
        weights = [1 / (rank + 1) ** ZIPF_S for rank in range(len(self.names))]
        return random.Random(self.seed).choices(self.names, weights, k=100_000)

    def __call__(self, index: int, turn: int) -> str:
        return self.draws[(index * 7919 + turn) % len(self.draws)]


Traffic = RoundRobin | Zipf  # which adapter (model name) client ``index`` asks for on its ``turn``-th request


# ---- clients ------------------------------------------------------------------------------------


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


def closed_loop(
    url: str | list[str], label: str, clients: int, models: Traffic, seconds: float, tokens: int, warmup: float
) -> Load:
    """``clients`` users, each sending its next request as soon as the last one finished, for ``seconds``;
    given several URLs (replicas), client ``index`` uses ``url[index % len(url)]``, as a load balancer would."""
    records: list[Request] = []
    lock = threading.Lock()
    failures: list[BaseException] = []
    start = time.perf_counter()
    stop_at = start + warmup + seconds

    def user(index: int) -> None:
        turn = 0
        base = url if isinstance(url, str) else url[index % len(url)]
        with httpx.Client(base_url=base, timeout=600) as client:
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
        raise RuntimeError(f"{label}: a request failed: {failures[0]}")
    return Load(label, clients, records, (start + warmup, stop_at))


TRAFFIC = {kind.__name__: kind for kind in (RoundRobin, Zipf)}


class LoadGenerator:
    """The load generator's process, started once and asked for one load at a time."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.load"],
            cwd=Path(__file__).resolve().parents[1],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def measure(
        self, url: str | list[str], label: str, clients: int, models: Traffic, seconds: float, tokens: int, warmup: float
    ) -> Load:
        traffic = {"kind": type(models).__name__, "names": list(models.names)}
        order = {"url": url, "label": label, "clients": clients, "traffic": traffic}
        order.update(seconds=seconds, tokens=tokens, warmup=warmup)
        self._process.stdin.write(json.dumps(order) + "\n")
        self._process.stdin.flush()
        answer = json.loads(self._process.stdout.readline() or '{"error": "the load generator exited"}')
        if "error" in answer:
            raise SystemExit(answer["error"])
        load = answer["load"]
        return Load(load["label"], load["clients"], [Request(**r) for r in load["requests"]], tuple(load["window"]))

    def close(self) -> None:
        self._process.stdin.close()
        self._process.wait(timeout=30)


def serve_orders() -> None:
    """The load generator's side: one JSON order per input line, one JSON load (or error) per output line."""
    for line in sys.stdin:
        order = json.loads(line)
        traffic = order.pop("traffic")
        models = TRAFFIC[traffic["kind"]](tuple(traffic["names"]))
        try:
            answer = {"load": asdict(closed_loop(models=models, **order))}
        except RuntimeError as exc:
            answer = {"error": str(exc)}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    serve_orders()
