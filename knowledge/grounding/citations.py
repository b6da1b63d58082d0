"""Citation markers ([1], [1, 2], [1][3]) in an answer: find them, rewrite them, split the answer into sentences.

A citation belongs to the sentence it closes: "covered for 3 years [1]." and
"covered for 3 years. [1]" both cite [1] for that sentence, so the sentence
splitter keeps markers that follow a full stop with the sentence before them.
"""

from __future__ import annotations

import re
from collections.abc import Callable

CITATION = re.compile(r"\s?\[\s*(\d{1,3}(?:\s*[,;]\s*\d{1,3})*)\s*\]")
_SENTENCE_END = re.compile(r"[.!?。！？](?:\s*\[\s*\d{1,3}(?:\s*[,;]\s*\d{1,3})*\s*\])*(?:\s+|$)|[。！？]|\n+")


def cited(text: str) -> list[int]:
    """Source numbers the text cites, in order of first citation."""
    numbers: list[int] = []
    for match in CITATION.finditer(text):
        for part in re.split(r"[,;]", match.group(1)):
            number = int(part)
            if number not in numbers:
                numbers.append(number)
    return numbers


def rewrite_citations(text: str, change: Callable[[list[int]], list[int]]) -> str:
    """Replace each marker's numbers by ``change(numbers)``; a marker left with none is removed."""

    def replace(match: re.Match) -> str:
        numbers = list(dict.fromkeys(change([int(p) for p in re.split(r"[,;]", match.group(1))])))
        if not numbers:
            return ""
        space = " " if match.group().startswith((" ", "\t")) else ""
        return space + "".join(f"[{n}]" for n in numbers)

    return CITATION.sub(replace, text)


def add_citations(sentence: str, numbers: list[int]) -> str:
    """``sentence`` citing ``numbers`` too: after its own markers, before its closing punctuation."""
    if not numbers:
        return sentence
    body = sentence.rstrip()
    tail = sentence[len(body) :]
    end = re.search(r"(?P<markers>(?:\s*\[\s*\d{1,3}(?:\s*[,;]\s*\d{1,3})*\s*\])*)(?P<stop>[.!?。！？:：]?)$", body)
    markers = end.group("markers") or " "
    added = "".join(f"[{n}]" for n in numbers)
    return f"{body[: end.start()]}{markers}{added}{end.group('stop')}{tail}"


def split_sentences(text: str) -> list[str]:
    """Sentences with their trailing space and citations; joined, they give ``text`` back exactly."""
    pieces, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        if match.end() > start:
            pieces.append(text[start : match.end()])
            start = match.end()
    if start < len(text):
        pieces.append(text[start:])
    return pieces
