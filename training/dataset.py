"""Training sets from the conversation log and from chat files, with a card that says what went in.

Train as we serve: a logged turn becomes the exact messages the pipeline sent
(``knowledge.prompt.build_messages``: system prompt, numbered sources, history,
question), so an adapter learns to answer from the sources it is given rather
than to memorise facts. ``include_sources=False`` drops them.

Order of work: collect (log and files) → scrub personal data → filter →
remove duplicates → split off the held-out set → mix in replay data. Every
example dropped on the way is counted under its reason in the dataset card.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from conversations.log import ConversationLog, Turn
from core.errors import InvalidRequestError
from core.sections import TrainingDefaults
from knowledge.passage import Passage
from knowledge.prompt import GROUNDING_RULES, build_messages
from training.dedup import NearDuplicates
from training.formats import Chat, read_chats
from training.pii import Scrubber

DATA_DIR = Path(__file__).parent / "corpus"
REPLAY_FILE = DATA_DIR / "general.jsonl"
REGRESSION_FILE = DATA_DIR / "regression.jsonl"


class LogFilters(BaseModel):
    """Which logged turns become training examples."""

    model_config = ConfigDict(extra="forbid")

    adapter: str | None = Field(
        None, description="Turns answered by this adapter; 'base' for turns answered without one; None for all."
    )
    rating: Literal["up", "down", "any"] = Field("up", description="Latest rating a turn must carry.")
    include_corrections: bool = Field(
        True, description="Also take corrected turns whatever their rating; the correction replaces the answer."
    )
    corrected_only: bool = Field(False, description="Only turns an operator corrected.")
    since: str | None = Field(None, description="ISO date or time; turns from then on.")
    until: str | None = Field(None, description="ISO date or time; turns before then.")


class DatasetOptions(BaseModel):
    """How examples are prepared, split and mixed."""

    model_config = ConfigDict(extra="forbid")

    include_sources: bool = Field(True, description="Keep the retrieved sources in the prompt, as served.")
    system_prompt: str | None = Field(
        None, description="System prompt for file examples that bring none (the adapter's, as it will be served)."
    )
    min_answer_chars: int = Field(2, ge=0, description="Examples whose answer is shorter are dropped.")
    holdout_fraction: float = Field(0.15, ge=0.0, lt=0.9, description="Share kept out of training for held-out loss.")
    replay_fraction: float = Field(0.08, ge=0.0, lt=0.9, description="Share of shipped general data in the training mix.")
    near_duplicate_threshold: float = Field(
        0.7, gt=0.0, le=1.0, description="Jaccard similarity of token bigrams that counts as a duplicate."
    )
    seed: int = Field(42, description="Seed of the split and the replay sample.")
    replay_file: Path = Field(REPLAY_FILE, description="General instruction chats mixed in against forgetting.")

    @classmethod
    def from_defaults(cls, defaults: TrainingDefaults, **overrides) -> "DatasetOptions":
        values = {name: getattr(defaults, name) for name in ("holdout_fraction", "replay_fraction", "seed")}
        values["min_answer_chars"] = defaults.min_answer_chars
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @model_validator(mode="after")
    def _check(self) -> "DatasetOptions":
        if self.holdout_fraction + self.replay_fraction >= 0.95:
            raise ValueError("holdout_fraction and replay_fraction leave no room for training data")
        return self


@dataclass
class DatasetCard:
    """What a dataset is made of; stored with it and with every adapter trained on it."""

    sources: list[str] = field(metadata={"help": "Where examples came from: the log and data files."})
    filters: dict = field(metadata={"help": "Log filters and preparation options in force."})
    counts: dict = field(metadata={"help": "Examples read, kept, in training, held out, replayed."})
    dropped: dict = field(metadata={"help": "Examples left out, by reason."})
    scrubbed: dict = field(metadata={"help": "Personal identifiers replaced, by kind."})
    content_hash: str = field(metadata={"help": "sha256 of the training and held-out examples."})
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def warnings(self) -> list[str]:
        """What an operator should know before training on this data."""
        if self.counts.get("held_out"):
            return []
        return [
            "nothing is held out, so the gate has no held-out loss to compare and can only reject the candidate: "
            "collect at least 4 usable turns, or raise holdout_fraction (or train with --force)"
        ]

    def to_dict(self) -> dict:
        return {**asdict(self), "warnings": self.warnings}


@dataclass
class ChatDataset:
    train: list[Chat] = field(metadata={"help": "Training chats, replay mixed in."})
    held_out: list[Chat] = field(metadata={"help": "Chats kept out of training."})
    card: DatasetCard
    questions: list[str] = field(
        default_factory=list, metadata={"help": "The users' questions of the training chats (scrubbed), for routing examples."}
    )

    def write(self, folder: Path) -> None:
        """``train.jsonl``, ``held_out.jsonl`` and ``card.json`` in ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        for name, chats in (("train", self.train), ("held_out", self.held_out)):
            with (folder / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
                for chat in chats:
                    handle.write(json.dumps({"messages": chat}, ensure_ascii=False) + "\n")
        (folder / "card.json").write_text(json.dumps(self.card.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")


def served_system_prompt(logged: str | None) -> str | None:
    """The system prompt before ``build_messages`` added the grounding rules, so rebuilding does not add them twice."""
    if logged is None:
        return None
    return logged.removesuffix(f"\n\n{GROUNDING_RULES}")


def turn_to_chat(turn: Turn, include_sources: bool = True) -> Chat:
    """The messages this turn was served with, ending in its answer (the correction, when there is one)."""
    passages = []
    if include_sources:
        known = set(Passage.__dataclass_fields__)
        passages = [Passage(**{k: v for k, v in source.items() if k in known}) for source in turn.sources]
    messages = build_messages(turn.user, passages, served_system_prompt(turn.system_prompt), turn.history)
    return [*messages, {"role": "assistant", "content": turn.answer}]


def with_system(chat: Chat, system_prompt: str | None) -> Chat:
    """File examples get the system message serving would put in front of them."""
    if chat[0]["role"] == "system":
        return chat
    return [build_messages("", (), system_prompt)[0], *chat]


def content_hash(chats: Sequence[Chat]) -> str:
    digest = hashlib.sha256()
    for chat in chats:
        digest.update(json.dumps(chat, ensure_ascii=False, sort_keys=True).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def chat_text(chat: Chat) -> str:
    return "\n".join(m["content"] for m in chat if m["role"] != "system")


def _log_examples(log: ConversationLog, filters: LogFilters, include_sources: bool, dropped: Counter) -> list[tuple[str, Chat]]:
    """``(question, chat)`` for each wanted turn."""
    examples = []
    turns = log.turns(adapter=filters.adapter, since=filters.since, until=filters.until, corrected_only=filters.corrected_only)
    for turn in turns:
        wanted = filters.rating == "any" or turn.rating == filters.rating
        if not wanted and not (filters.include_corrections and turn.corrected):
            dropped[f"rating is not {filters.rating}"] += 1
            continue
        if turn.failed_checks and not turn.corrected:
            dropped["answer failed the source checks and has no correction"] += 1
            continue
        examples.append((turn.user, turn_to_chat(turn, include_sources)))
    return examples


def build_dataset(
    *,
    log: ConversationLog | None = None,
    filters: LogFilters | None = None,
    files: Sequence[Path] = (),
    options: DatasetOptions | None = None,
) -> ChatDataset:
    """Collect, scrub, filter, deduplicate, split and mix; raises when nothing usable is left."""
    options = options or DatasetOptions()
    dropped: Counter = Counter()
    scrub = Scrubber()
    sources: list[str] = []
    collected: list[tuple[str, Chat]] = []
    if log is not None:
        filters = filters or LogFilters()
        sources.append(f"log:{log.database.where}")
        collected += _log_examples(log, filters, options.include_sources, dropped)
    for path in files:
        sources.append(f"file:{path}")
        collected += [(chat[-2]["content"], with_system(chat, options.system_prompt)) for _, chat in read_chats(Path(path), dropped)]
    if not sources:
        raise InvalidRequestError("no training data: take it from the conversation log or give a data file")

    read = len(collected) + sum(dropped.values())
    kept: list[tuple[str, Chat]] = []
    duplicates = NearDuplicates(options.near_duplicate_threshold, options.seed)
    for question, chat in collected:
        chat = scrub.chat(chat)
        if len(chat[-1]["content"].strip()) < options.min_answer_chars:
            dropped[f"answer shorter than {options.min_answer_chars} characters"] += 1
            continue
        duplicate = duplicates.check(chat_text(chat))
        if duplicate:
            dropped[f"{duplicate} duplicate"] += 1
            continue
        kept.append((Scrubber()(question), chat))  # a throwaway scrubber: the chat was counted already
    if not kept:
        reasons = ", ".join(f"{n} {reason}" for reason, n in dropped.most_common()) or "none found"
        raise InvalidRequestError(f"no usable training examples ({reasons})")

    rng = random.Random(options.seed)
    rng.shuffle(kept)
    n_held_out = round(len(kept) * options.holdout_fraction) if options.holdout_fraction else 0
    if options.holdout_fraction and len(kept) >= 4:
        n_held_out = max(1, n_held_out)
    held_out, train = [c for _, c in kept[:n_held_out]], [c for _, c in kept[n_held_out:]]
    replay = sample_replay(options, len(train), rng)
    train_mix = train + replay
    rng.shuffle(train_mix)

    card = DatasetCard(
        sources=sources,
        filters={**(filters.model_dump() if filters else {}), **options.model_dump(mode="json")},
        counts={
            "read": read,
            "kept": len(kept),
            "train": len(train),
            "held_out": len(held_out),
            "replay": len(replay),
        },
        dropped=dict(dropped),
        scrubbed=dict(scrub.counts),
        content_hash=content_hash(train_mix + held_out),
    )
    return ChatDataset(train_mix, held_out, card, questions=[q for q, _ in kept[n_held_out:]])


def sample_replay(options: DatasetOptions, n_train: int, rng: random.Random) -> list[Chat]:
    """General chats making up ``replay_fraction`` of the training mix, with the system prompt the adapter serves with."""
    if not options.replay_fraction or not n_train:
        return []
    pool = [with_system(chat, options.system_prompt) for _, chat in read_chats(options.replay_file, Counter())]
    wanted = max(1, round(n_train * options.replay_fraction / (1 - options.replay_fraction)))
    return rng.sample(pool, min(wanted, len(pool)))
