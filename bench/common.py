"""What the benchmarks share: the prompts they generate for, reading an OpenAI event stream, timing medians."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterator

PROMPTS = [
    "How long is the warranty on a backpack?",
    "Can I return a tent after thirty days?",
    "What does Article 5 say about the guarantee?",
    "Which payment methods do you accept?",
    "How do I change my delivery address?",
    "Is a shop allowed to refuse a refund?",
    "When will my order arrive?",
    "What is the limitation period for claims?",
]


def sse_chunks(response) -> Iterator[dict]:
    """The JSON chunks of a streamed ``/v1/chat/completions`` response; an error event fails the benchmark."""
    for line in response.iter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if "error" in chunk:
            raise RuntimeError(chunk["error"]["message"])
        yield chunk


def median_seconds(fn: Callable[[], object], runs: int) -> float:
    """The median wall time of ``runs`` calls of ``fn``."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)
