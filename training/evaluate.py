"""Evaluation of an adapter: held-out loss, a golden set, and the forgetting guard.

All figures come from one base model instance of our own with the adapters
loaded side by side (``candidate``, ``live``) and switched per measurement,
so base, live and candidate are compared on identical weights and prompts.

- Held-out loss and perplexity: mean negative log-likelihood of the answer
  tokens (the same assistant mask as training) on chats kept out of training.
- Golden set: JSONL cases ``{"prompt", "expected"?, "contains"?,
  "required_phrases"?, "required_sections"?, "json"?}`` answered greedily
  and scored by exact match, containment, ROUGE-L and the format checks.
- Regression: perplexity on general English and Chinese chats
  (``training/corpus/regression.jsonl``); an adapter that raises it by more than
  the margin over the base has started to forget.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.errors import InvalidRequestError
from core.settings import Settings
from knowledge.passage import Passage
from knowledge.prompt import build_messages
from training.formats import Chat

BASE, CANDIDATE, LIVE = "base", "candidate", "live"


@dataclass(frozen=True)
class LossReport:
    loss: float
    perplexity: float
    tokens: int

    @classmethod
    def of(cls, total_nll: float, tokens: int) -> "LossReport":
        loss = total_nll / tokens if tokens else float("nan")
        return cls(round(loss, 6), round(math.exp(min(loss, 50.0)), 4) if tokens else float("nan"), tokens)


@dataclass
class GoldenCase:
    prompt: str
    expected: str | None = None
    contains: list[str] = field(default_factory=list)
    required_phrases: list[str] = field(default_factory=list)
    required_sections: list[str] = field(default_factory=list)
    json: bool = False
    sources: list[dict] = field(default_factory=list)


@dataclass
class GoldenResult:
    prompt: str
    answer: str
    scores: dict[str, float | bool]
    passed: bool


@dataclass
class GoldenReport:
    cases: int
    passed: int
    pass_rate: float
    exact: float | None
    contains: float | None
    rouge_l: float | None
    format: float | None
    results: list[GoldenResult]

    def to_dict(self) -> dict:
        return asdict(self)


# --- golden set ---------------------------------------------------------------------------------


def read_golden(path: Path) -> list[GoldenCase]:
    """Golden cases from JSONL; a malformed line is an error here, because a golden set is small and hand-made."""
    path = Path(path)
    if not path.is_file():
        raise InvalidRequestError(f"golden set not found: {path}")
    known = set(GoldenCase.__dataclass_fields__)
    cases = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
                raise ValueError("needs a non-empty prompt")
            unknown = set(record) - known
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)}")
            cases.append(GoldenCase(**record))
        except (ValueError, TypeError) as exc:
            raise InvalidRequestError(f"{path}:{number}: not a golden case ({exc})") from exc
    if not cases:
        raise InvalidRequestError(f"{path}: no golden cases")
    return cases


def rouge_l(answer: str, expected: str) -> float:
    from rouge_score import rouge_scorer

    from training.text import MixedTokenizer

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=MixedTokenizer())
    return round(scorer.score(expected, answer)["rougeL"].fmeasure, 4)


def _has_section(answer: str, section: str) -> bool:
    """A section is a line that starts with its name, as a Markdown heading, a bold label or a 'Name:' label."""
    name = re.escape(section.strip().rstrip(":"))
    return re.search(rf"(?im)^\s*(?:#+\s*|\*\*)?{name}\s*(?:\*\*)?\s*:?", answer) is not None


def _is_json(answer: str) -> bool:
    text = answer.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.S)
    try:
        json.loads(fenced.group(1) if fenced else text)
    except ValueError:
        return False
    return True


def score_case(case: GoldenCase, answer: str) -> GoldenResult:
    scores: dict[str, float | bool] = {}
    checks: list[bool] = []
    if case.expected is not None:
        scores["exact"] = answer.strip() == case.expected.strip()
        scores["contains"] = case.expected.strip().lower() in answer.lower()
        scores["rouge_l"] = rouge_l(answer, case.expected)
        checks.append(bool(scores["contains"]))
    if case.contains:
        scores["contains_all"] = all(c.lower() in answer.lower() for c in case.contains)
        checks.append(bool(scores["contains_all"]))
    format_checks = [p in answer for p in case.required_phrases]
    format_checks += [_has_section(answer, s) for s in case.required_sections]
    if case.json:
        format_checks.append(_is_json(answer))
    if format_checks:
        scores["format"] = all(format_checks)
        checks.append(bool(scores["format"]))
    return GoldenResult(case.prompt, answer, scores, all(checks))


def summarise_golden(results: Sequence[GoldenResult]) -> GoldenReport:
    def mean(key: str) -> float | None:
        values = [float(r.scores[key]) for r in results if key in r.scores]
        return round(sum(values) / len(values), 4) if values else None

    passed = sum(r.passed for r in results)
    return GoldenReport(
        cases=len(results),
        passed=passed,
        pass_rate=round(passed / len(results), 4) if results else 0.0,
        exact=mean("exact"),
        contains=mean("contains"),
        rouge_l=mean("rouge_l"),
        format=mean("format"),
        results=list(results),
    )


def golden_chat(case: GoldenCase, system_prompt: str | None) -> Chat:
    known = set(Passage.__dataclass_fields__)
    passages = [Passage(**{k: v for k, v in s.items() if k in known}) for s in case.sources]
    return build_messages(case.prompt, passages, system_prompt)


# --- the models ---------------------------------------------------------------------------------


def greedy_answers(
    model, tokenizer, prompts: Sequence[Chat], max_new_tokens: int = 48, repetition_penalty: float = 1.2, batch_size: int = 8
) -> list[str]:
    """Greedy answers to chats, batched, with the model's own (served) chat template and the served penalty."""
    import torch
    from transformers import LogitsProcessorList

    from engine.sampling import penalize_repeats

    tokenizer.padding_side = "left"
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        texts = [tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in chunk]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        width = batch["input_ids"].shape[1]
        penalty = LogitsProcessorList([lambda ids, scores: penalize_repeats(scores, ids[:, width:], repetition_penalty)])
        with torch.no_grad():
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                logits_processor=penalty,
                pad_token_id=tokenizer.pad_token_id,
            )
        answers += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return [a.strip() for a in answers]


def answer_nll(model, tokenizer, chats: Sequence[Chat], template: str, max_length: int = 512, batch_size: int = 4) -> LossReport:
    """Summed negative log-likelihood of the answer tokens (training's assistant mask), as one loss and perplexity."""
    import torch
    import torch.nn.functional as F

    from training.chat_template import assistant_spans

    rows = []
    for chat in chats:
        ids, mask = assistant_spans(tokenizer, chat, template)
        rows.append((ids[:max_length], mask[:max_length]))
    total, tokens = 0.0, 0
    pad = tokenizer.pad_token_id
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        for row, (ids, mask) in enumerate(chunk):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
            labels[row, : len(ids)] = torch.tensor([t if m else -100 for t, m in zip(ids, mask)])
        # Only the positions that predict an answer token need the output layer: the prompt with its sources is
        # most of each row, and a vocabulary-wide row of logits per prompt token is most of the time and memory.
        scored = (labels[:, 1:] != -100).any(dim=0).nonzero().squeeze(1)
        targets = labels[:, scored + 1].to(model.device)
        with torch.no_grad():
            out = model(input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device), logits_to_keep=scored.to(model.device))
        logits = out.logits.float()
        total += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100, reduction="sum"))
        tokens += int((targets != -100).sum())
    return LossReport.of(total, tokens)


class Evaluator:
    """One base instance with the candidate and the live adapter loaded beside it."""

    def __init__(self, settings: Settings, candidate: Path | None = None, live: Path | None = None) -> None:
        from peft import PeftModel

        from engine.base_model import load_base
        from training.chat_template import training_template

        self.settings = settings
        self.base = load_base(settings)
        self.tokenizer = self.base.tokenizer
        self.template = training_template(self.tokenizer)
        self.variants = [BASE]
        self.model = self.base.model
        for name, folder in ((CANDIDATE, candidate), (LIVE, live)):
            if folder is None:
                continue
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(folder), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name)
            self.variants.append(name)
        self.model.eval()

    def _use(self, variant: str):
        """A context in which the model answers as ``variant``."""
        from contextlib import nullcontext

        if variant not in self.variants:
            raise ValueError(f"no {variant} adapter loaded")
        if variant == BASE:
            return self.model.disable_adapter() if self.model is not self.base.model else nullcontext()
        self.model.set_adapter(variant)
        return nullcontext()

    def loss(self, chats: Sequence[Chat], variant: str) -> LossReport:
        with self._use(variant):
            return answer_nll(self.model, self.tokenizer, chats, self.template)

    def answers(self, prompts: Sequence[Chat], variant: str, max_new_tokens: int = 64) -> list[str]:
        with self._use(variant):
            return greedy_answers(
                self.model, self.tokenizer, prompts, max_new_tokens, self.settings.generation.repetition_penalty
            )

    def golden(self, cases: Sequence[GoldenCase], variant: str, system_prompt: str | None, max_new_tokens: int = 96) -> GoldenReport:
        answers = self.answers([golden_chat(c, system_prompt) for c in cases], variant, max_new_tokens)
        return summarise_golden([score_case(c, a) for c, a in zip(cases, answers)])
