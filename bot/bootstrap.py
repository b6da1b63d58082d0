"""First run: the demo assistants, so a newcomer meets a working product.

Ingests each demo assistant's documents into its collection, trains its
adapter with the training module on its examples (rendered in the exact
prompt layout the pipeline serves, with the recipe in its manifest's
``training`` block), and installs it through the evaluation gate. Everything is cached: unchanged documents are skipped and an adapter
already in the registry is not retrained, so later starts take seconds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bot.parts import Parts
from knowledge.passage import Passage
from knowledge.prompt import build_messages

log = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).resolve().parents[1] / "demo"
DEMO_ASSISTANTS = ("support", "legal")


@dataclass
class BootstrapReport:
    ingested: dict[str, dict] = field(default_factory=dict)
    trained: dict[str, dict] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"ingested": self.ingested, "trained": self.trained, "skipped": self.skipped}


def _passages(sources: list[dict]) -> list[Passage]:
    return [
        Passage(id=f"demo-{i}", source=s["source"], text=s["text"], section=s.get("section", ""))
        for i, s in enumerate(sources)
    ]


def write_training_files(assistant: Path, system_prompt: str, target: Path) -> tuple[Path, Path]:
    """Demo records ``{question, sources, answer}`` as OpenAI chats and golden cases, in the served layout."""
    target.mkdir(parents=True, exist_ok=True)
    chats, golden = [], []
    for line in (assistant / "train.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            messages = build_messages(record["question"], _passages(record["sources"]), system_prompt)
            chats.append({"messages": [*messages, {"role": "assistant", "content": record["answer"]}]})
    for line in (assistant / "golden.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            sources = [{"id": f"demo-{i}", **s} for i, s in enumerate(record["sources"])]
            case = {"prompt": record["question"], "sources": sources, "contains": [record["expected"]]}
            golden.append({**case, "required_phrases": record.get("required_phrases", [])})
    data, cases = target / "train.jsonl", target / "golden.jsonl"
    data.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in chats), encoding="utf-8")
    cases.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in golden), encoding="utf-8")
    return data, cases


def bootstrap(
    parts: Parts,
    demo_dir: Path = DEMO_DIR,
    max_steps: int | None = None,
    on_progress: Callable[[str, object], None] | None = None,
) -> BootstrapReport:
    """Make the demo assistants ready; returns what was ingested, trained or already there."""
    from training.request import TrainRequest
    from training.train import train_adapter

    report = BootstrapReport()
    names = set(parts.registry.names())
    for name in DEMO_ASSISTANTS:
        assistant = demo_dir / name
        manifest = json.loads((assistant / "manifest.json").read_text(encoding="utf-8"))
        documents = sorted(p for p in (assistant / "knowledge").iterdir() if p.is_file())
        for collection in manifest.get("collections", [name]):
            report.ingested[collection] = parts.knowledge.ingest(documents, collection, progress=True).to_dict()
        if name in names:
            report.skipped.append(name)
            continue
        log.info("Training the demo adapter %r (first start only)", name)
        data, golden = write_training_files(assistant, manifest["system_prompt"], parts.settings.home / "demo" / name)
        recipe = {**manifest.get("training", {}), **({"max_steps": max_steps} if max_steps else {})}
        request = TrainRequest(
            adapter=name,
            data=[str(data)],
            golden=str(golden),
            description=manifest["description"],
            system_prompt=manifest["system_prompt"],
            examples=manifest["examples"],
            **recipe,
        )
        run = train_adapter(request, settings=parts.settings, registry=parts.registry, on_progress=on_progress)
        if run.get("installed"):
            parts.registry.update(
                name,
                collections=manifest.get("collections", [name]),
                no_answer=manifest.get("no_answer", ""),
                keywords=manifest.get("keywords", []),
            )
        report.trained[name] = {
            "run_id": run["run_id"],
            "installed": run.get("installed"),
            "gate": run.get("gate"),
            "seconds": run.get("seconds"),
        }
    return report
