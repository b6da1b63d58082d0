"""How well the router does on labelled messages, and the threshold that would do best.

A routing decision splits into a part that needs the encoder (the best
adapter and its score) and a part that does not (comparing that score with
the threshold). Each message is scored once; every threshold is then tried on
those scores, so calibrating a large file costs one pass of embeddings.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bot.router import BASE, Router
from core.errors import InvalidRequestError

BASE_LABEL = BASE  # how "no adapter" appears in reports; no adapter can be named so


@dataclass(frozen=True)
class LabelledMessage:
    text: str = field(metadata={"help": "The message as a user would send it."})
    adapter: str | None = field(metadata={"help": "Adapter that should answer; None for the base model."})


@dataclass(frozen=True)
class Scored:
    """One labelled message after routing, before any threshold."""

    label: str | None
    best: str | None  # highest-scoring adapter; None when nothing is routable
    score: float

    def predicted(self, threshold: float) -> str | None:
        return self.best if self.best is not None and self.score >= threshold else None


@dataclass(frozen=True)
class Calibration:
    count: int = field(metadata={"help": "Labelled messages evaluated."})
    threshold: float = field(metadata={"help": "The threshold now configured; the figures below use it."})
    accuracy: float = field(metadata={"help": "Share of messages routed to their label at that threshold."})
    per_adapter: dict[str, dict] = field(
        metadata={"help": "Per label ('base' for none): precision, recall (null when undefined), support."}
    )
    confusion: dict[str, dict[str, int]] = field(metadata={"help": "confusion[true][predicted] = count."})
    best_threshold: float = field(metadata={"help": "Middle of the widest threshold range of highest accuracy."})
    best_accuracy: float = field(metadata={"help": "Accuracy at best_threshold."})

    def to_dict(self) -> dict:
        return asdict(self)


def read_labelled(path: Path, adapters: list[str]) -> list[LabelledMessage]:
    """Lines of ``{"text", "adapter"}``; ``adapter`` is null (or "base") for the base or one of ``adapters``."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"{path}: cannot read the labelled file ({exc})") from exc
    known = set(adapters)
    cases = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("text"), str) or not record["text"].strip():
            raise InvalidRequestError(f'{path}:{number}: expected {{"text": "...", "adapter": NAME or null}}')
        label = record.get("adapter")
        label = None if label in (None, BASE_LABEL) else label
        if label is not None and label not in known:
            raise InvalidRequestError(
                f"{path}:{number}: {label!r} is not an enabled adapter (enabled: {', '.join(sorted(known)) or 'none'})"
            )
        cases.append(LabelledMessage(record["text"], label))
    if not cases:
        raise InvalidRequestError(f"{path}: no labelled messages")
    return cases


def score_all(router: Router, cases: list[LabelledMessage], progress: bool = False, batch: int = 64) -> list[Scored]:
    from tqdm import tqdm

    scored = []
    with tqdm(total=len(cases), desc="routing", unit="msg", disable=not progress, leave=False) as bar:
        for start in range(0, len(cases), batch):
            chunk = cases[start : start + batch]
            for case, scores in zip(chunk, router.score_batch([c.text for c in chunk])):
                best = max(scores, key=scores.get) if scores else None
                scored.append(Scored(case.adapter, best, scores[best] if best else 0.0))
            bar.update(len(chunk))
    return scored


def best_threshold(scored: list[Scored]) -> tuple[float, float]:
    """The threshold of highest accuracy and that accuracy.

    Between two neighbouring scores every threshold decides alike, so only
    those ranges are tried; of the best ones the widest wins and its middle
    is returned, which leaves the most room for messages not in the file.
    """
    scores = np.array([s.score for s in scored])
    hits = np.sort(scores[[s.best is not None and s.best == s.label for s in scored]])
    bases = np.sort(scores[[s.label is None for s in scored]])
    edges = np.unique(np.concatenate([[0.0, 1.0], np.clip(scores, 0.0, 1.0)]))
    lows, highs = edges[:-1], edges[1:]
    # A threshold t in (low, high] routes exactly the messages scoring >= high.
    correct = (len(hits) - np.searchsorted(hits, highs, side="left")) + np.searchsorted(bases, highs, side="left")
    accuracy = correct / len(scored)
    best = np.flatnonzero(accuracy == accuracy.max())
    pick = best[np.argmax(highs[best] - lows[best])]
    low, high = float(lows[pick]), float(highs[pick])
    middle = (low + high) / 2
    rounded = round(middle, 3)
    return (rounded if low < rounded <= high else middle), float(accuracy[pick])


def calibrate(router: Router, cases: list[LabelledMessage], progress: bool = False) -> Calibration:
    scored = score_all(router, cases, progress)
    threshold = router.config.threshold
    labels = sorted({c.adapter for c in cases if c.adapter} | set(router.routable)) + [BASE_LABEL]
    confusion = {true: {predicted: 0 for predicted in labels} for true in labels}
    for s in scored:
        confusion[s.label or BASE_LABEL][s.predicted(threshold) or BASE_LABEL] += 1
    per_adapter = {}
    for label in labels:
        hits = confusion[label][label]
        predicted = sum(row[label] for row in confusion.values())
        actual = sum(confusion[label].values())
        per_adapter[label] = {
            "precision": hits / predicted if predicted else None,
            "recall": hits / actual if actual else None,
            "support": actual,
        }
    correct = sum(confusion[label][label] for label in labels)
    threshold_best, accuracy_best = best_threshold(scored)
    return Calibration(
        count=len(scored),
        threshold=threshold,
        accuracy=correct / len(scored),
        per_adapter=per_adapter,
        confusion=confusion,
        best_threshold=threshold_best,
        best_accuracy=accuracy_best,
    )
