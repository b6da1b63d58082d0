"""Reading an OpenAI event stream, as the serving benchmarks receive it."""

from __future__ import annotations

import json
from collections.abc import Iterator


def sse_chunks(response) -> Iterator[dict]:
    """The JSON chunks of a streamed ``/v1/chat/completions`` response; an error event fails the benchmark."""
    for line in response.iter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if "error" in chunk:
            raise RuntimeError(chunk["error"]["message"])
        yield chunk
