"""Can a support or legal team trust the answers? Routing, retrieval, citations and facts on a labelled set.

    .venv/bin/python bench/answers.py [--set demo/answers] [--home data] [--max-tokens 200]

A labelled set is a folder with ``documents/<collection>/`` (each subfolder
ingested into the collection of its name) and ``questions.jsonl``: lines
``{"question", "collection", "expected_source", "expected_fact": [spellings],
"kind": "in-domain" | "out-of-domain"}``. The shipped set (``demo/answers``)
is a shop and a statute the product and its tests have never seen.

The adapters come from ``--home`` (``make run`` installs the demo ones there);
they are copied into a temporary home that holds only the set's documents,
so nothing of that home changes. Every question is asked through the
pipeline twice, with routing on its examples alone (the product before
retrieval-aware routing) and with retrieval taking part; the model's answer
is then shown as generated, with the citation checks, and with every check:
the checks work on the generated text, so one generation serves all three
and the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.parts import Parts  # noqa: E402
from bot.turn import PreparedTurn, TurnRequest  # noqa: E402
from core.settings import load_settings  # noqa: E402
from core.sections import GroundingConfig  # noqa: E402
from knowledge.grounding import audit_answer, ground_answer  # noqa: E402
from knowledge.passage import Passage  # noqa: E402

CHECKS = {
    "none": GroundingConfig(check_citations=False, check_facts=False, keep_script=False),
    "citations": GroundingConfig(check_facts=False),
    "all": GroundingConfig(),
}
ROUTING = {"examples": {"retrieval_threshold": 1.0, "retrieval_weight": 0.0}, "retrieval": {}}
CONFIGS = [("examples", "none"), ("retrieval", "none"), ("retrieval", "citations"), ("retrieval", "all")]
TARGETS = {"citations_valid": 1.0, "facts_grounded": 1.0, "reach_retrieval": 0.95, "fact_present": 0.5}


@dataclass(frozen=True)
class Question:
    question: str
    collection: str | None
    expected_source: str | None
    expected_fact: tuple[str, ...]
    in_domain: bool


@dataclass
class Outcome:
    """One question under one configuration."""

    question: Question
    adapter: str | None
    collections: tuple[str, ...]
    reason: str
    passages: list[Passage]
    shown: str
    refusal: bool
    seconds: float
    checks: dict = field(default_factory=dict)


def read_questions(path: Path) -> list[Question]:
    questions = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        fact = row.get("expected_fact") or []
        questions.append(
            Question(
                row["question"],
                row.get("collection"),
                row.get("expected_source"),
                tuple([fact] if isinstance(fact, str) else fact),
                row.get("kind", "in-domain" if row.get("expected_source") else "out-of-domain") == "in-domain",
            )
        )
    if not questions:
        raise SystemExit(f"{path}: no questions")
    return questions


def make_home(source_home: Path, documents: Path) -> Path:
    """A temporary home with ``source_home``'s adapters and converted base model, and no knowledge yet."""
    if not (source_home / "adapters").is_dir():
        raise SystemExit(f"no adapters in {source_home}: run `make run` (or `switchboard bootstrap`) first, or pass --home")
    home = Path(tempfile.mkdtemp(prefix="switchboard-answers-"))
    shutil.copytree(source_home / "adapters", home / "adapters")
    if (source_home / "models").is_dir():
        (home / "models").symlink_to((source_home / "models").resolve(), target_is_directory=True)
    if not documents.is_dir():
        raise SystemExit(f"{documents}: no documents folder")
    return home


def ask(parts: Parts, question: Question, cache: dict) -> tuple[PreparedTurn, str, float]:
    """The turn as prepared, and the model's answer unchecked; equal prompts to one adapter are generated once."""
    started = time.perf_counter()
    turn = parts.pipeline.prepare(TurnRequest(question.question))
    key = (turn.adapter, json.dumps(turn.messages), turn.no_answer)
    if key not in cache:
        stream = parts.pipeline.stream(turn)
        for _ in stream:
            pass
        result = stream.result
        cache[key] = (result.answer, time.perf_counter() - started)
    answer, seconds = cache[key]
    return turn, answer, seconds


def run(args: argparse.Namespace) -> dict[tuple[str, str], list[Outcome]]:
    questions = read_questions(args.set / "questions.jsonl")[: args.limit]
    home = make_home(args.home, args.set / "documents")
    outcomes: dict[tuple[str, str], list[Outcome]] = {config: [] for config in CONFIGS}
    cache: dict = {}
    try:
        for routing, overrides in ROUTING.items():
            settings = load_settings(
                {
                    "home": home,
                    "router": overrides,
                    "grounding": CHECKS["none"].model_dump(),
                    "generation": {"max_new_tokens": args.max_tokens},
                    **({"base_model": args.base_model} if args.base_model else {}),
                },
                environ={},
            )
            parts = Parts(settings)
            if routing == "examples":
                for folder in sorted(p for p in (args.set / "documents").iterdir() if p.is_dir()):
                    report = parts.knowledge.ingest([folder], folder.name)
                    print(f"ingested {report.documents} documents into {folder.name}, skipped {len(report.skipped)}", file=sys.stderr)
            for number, question in enumerate(questions, start=1):
                turn, generated, seconds = ask(parts, question, cache)
                for check in [c for r, c in CONFIGS if r == routing]:
                    mark = time.perf_counter()
                    if turn.no_answer is not None:
                        shown, action = turn.no_answer, "unchecked"
                    else:
                        report = ground_answer(generated, turn.passages, question.question, CHECKS[check], turn.refusal)
                        shown, action = report.answer, report.action
                    outcomes[(routing, check)].append(
                        Outcome(
                            question,
                            turn.adapter,
                            tuple(turn.manifest.collections if turn.manifest else ()),
                            turn.route.reason,
                            turn.passages,
                            shown,
                            shown.strip() == turn.refusal,
                            seconds + time.perf_counter() - mark,
                            {"action": action},
                        )
                    )
                print(f"[{routing} {number}/{len(questions)}] {turn.adapter or 'base'}: {question.question[:60]}", file=sys.stderr)
            parts.knowledge.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return outcomes


def contains(answer: str, spellings: tuple[str, ...]) -> bool:
    text = " ".join(answer.lower().split())
    return any(" ".join(s.lower().split()) in text for s in spellings)


def measure(rows: list[Outcome]) -> dict[str, float]:
    """The figures of one configuration, as shares of the questions they apply to."""
    inside = [r for r in rows if r.question.in_domain]
    grounded = [r for r in rows if r.passages and not r.refusal]  # answers that rest on sources
    audits = [audit_answer(r.shown, r.passages, r.question.question) for r in grounded]

    def share(hits: list[bool]) -> float:
        return sum(hits) / len(hits) if hits else float("nan")

    return {
        "reach_retrieval": share([bool(r.collections) for r in inside]),  # answered from retrieval, not the bare base
        "source_retrieved": share([any(p.source == r.question.expected_source for p in r.passages) for r in inside]),
        "fact_present": share([contains(r.shown, r.question.expected_fact) for r in inside]),
        "citations_valid": share([a.cites and a.citations_valid for a in audits]),
        "facts_grounded": share([a.facts_grounded for a in audits]),
        "refusals": share([r.refusal for r in inside]),
        "replaced": share([r.checks.get("action") == "replaced" for r in grounded]),
        "out_of_domain_to_retrieval": share([bool(r.passages) for r in rows if not r.question.in_domain]),
        "latency_s": statistics.median(r.seconds for r in rows),
    }


def print_table(figures: dict[tuple[str, str], dict[str, float]]) -> None:
    names = list(next(iter(figures.values())))
    header = ["measure", *(f"{r} routing, checks {c}" for r, c in figures), "ratio all/before", "target"]
    lines = [header]
    before, after = figures[CONFIGS[0]], figures[CONFIGS[-1]]
    for name in names:
        ratio = after[name] / before[name] if before[name] else float("inf") if after[name] else float("nan")
        target = TARGETS.get(name)
        lines.append(
            [name, *(f"{f[name]:.3f}" for f in figures.values()), f"{ratio:.2f}x", f"≥ {target:g}" if target else ""]
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    for row in lines:
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", type=Path, default=ROOT / "demo" / "answers", help="Labelled set folder.")
    parser.add_argument("--home", type=Path, default=ROOT / "data", help="Home whose adapters answer (make run's).")
    parser.add_argument("--base-model", help="Base model id or folder, if not the home's default.")
    parser.add_argument("--max-tokens", type=int, default=200, help="Tokens generated at most per answer.")
    parser.add_argument("--limit", type=int, help="Only the first N questions.")
    parser.add_argument("--json", type=Path, help="Also write every answer and figure here.")
    args = parser.parse_args()
    outcomes = run(args)
    figures = {config: measure(rows) for config, rows in outcomes.items()}
    print_table(figures)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "figures": {f"{r}/{c}": f for (r, c), f in figures.items()},
                    "answers": {
                        f"{r}/{c}": [
                            {"question": o.question.question, "adapter": o.adapter, "reason": o.reason,
                             "sources": [p.source for p in o.passages], "answer": o.shown, **o.checks}
                            for o in rows
                        ]
                        for (r, c), rows in outcomes.items()
                    },
                },
                ensure_ascii=False,
                indent=1,
            ),
            encoding="utf-8",
        )


if __name__ == "__main__":
    main()
