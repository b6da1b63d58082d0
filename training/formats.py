"""Training data files: OpenAI ``messages``, Alpaca ``instruction/input/output`` and ShareGPT
``conversations`` JSON Lines, all read into one chat format (a list of ``{"role", "content"}``).

A file may mix the three. Lines that cannot be used are skipped and counted by
reason, never fatal on their own: one bad line in ten thousand should not cost
the other lines.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from core.errors import InvalidRequestError

Chat = list[dict]
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant"}


class Malformed(ValueError):
    """One line that cannot become a chat; its message is the reason counted in the dataset card."""


def _text(content) -> str:
    """Message content as text; OpenAI's list-of-parts form keeps its text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text"]
        if parts:
            return "".join(parts)
    raise Malformed("content is not text")


def _checked(chat: Chat) -> Chat:
    """A chat ends with an answer, alternates user and assistant after an optional system message, and has no empty text."""
    while chat and chat[-1]["role"] != "assistant":
        chat = chat[:-1]
    if not chat:
        raise Malformed("no assistant answer")
    body = chat[1:] if chat[0]["role"] == "system" else chat
    if not body or any(m["role"] == "system" for m in body):
        raise Malformed("system message out of place")
    if [m["role"] for m in body] != ["user", "assistant"] * (len(body) // 2) or len(body) % 2:
        raise Malformed("roles do not alternate user/assistant")
    if any(not m["content"].strip() for m in chat if m["role"] != "system"):
        raise Malformed("empty message")
    return chat


def _objects(record: dict, key: str) -> list[dict]:
    """The record's list of message objects under ``key`` (both chat formats keep one)."""
    items = record[key]
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise Malformed(f"{key} is not a list of objects")
    return items


def parse_record(record) -> Chat:
    """One JSON record in any supported format, as a checked chat."""
    if not isinstance(record, dict):
        raise Malformed("not a JSON object")
    if "messages" in record:
        chat = []
        for m in _objects(record, "messages"):
            if m.get("role") not in ROLES:
                raise Malformed(f"unknown role {m.get('role')!r}")
            chat.append({"role": m["role"], "content": _text(m.get("content"))})
        return _checked(chat)
    if "conversations" in record:
        chat = []
        for t in _objects(record, "conversations"):
            role = SHAREGPT_ROLES.get(str(t.get("from", "")).lower())
            if role is None:
                raise Malformed(f"unknown speaker {t.get('from')!r}")
            chat.append({"role": role, "content": _text(t.get("value"))})
        return _checked(chat)
    if "instruction" in record and "output" in record:
        instruction, extra, output = record["instruction"], record.get("input") or "", record["output"]
        if not all(isinstance(v, str) for v in (instruction, extra, output)):
            raise Malformed("instruction, input and output must be text")
        prompt = f"{instruction.strip()}\n\n{extra.strip()}" if extra.strip() else instruction.strip()
        return _checked([{"role": "user", "content": prompt}, {"role": "assistant", "content": output}])
    raise Malformed("unknown format (expected messages, conversations or instruction/output)")


def read_chats(path: Path, dropped: Counter) -> Iterator[tuple[int, Chat]]:
    """``(line number, chat)`` for each usable line of a JSONL file; the others are counted in ``dropped``."""
    path = Path(path)
    if not path.is_file():
        raise InvalidRequestError(f"training data file not found: {path}")
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                dropped["not UTF-8"] += 1
                continue
            except json.JSONDecodeError:
                dropped["not JSON"] += 1
                continue
            try:
                yield number, parse_record(record)
            except Malformed as exc:
                dropped[str(exc)] += 1
