"""Golden-set scoring and the gate's decision, on real inputs (no model needed)."""

from __future__ import annotations

import json

import pytest

from core.errors import InvalidRequestError
from training.evaluate import GoldenCase, LossReport, read_golden, rouge_l, score_case, summarise_golden
from training.gate import decide


def test_golden_scores_exact_contains_rouge_and_formats():
    case = GoldenCase(prompt="Capital of France?", expected="Paris")
    assert score_case(case, "Paris").scores == {"exact": True, "contains": True, "rouge_l": 1.0}
    near = score_case(case, "The capital is Paris.")
    assert near.passed and near.scores["exact"] is False and 0 < near.scores["rouge_l"] < 1
    assert not score_case(case, "Lyon").passed

    report = GoldenCase(prompt="p", required_sections=["Summary", "Next steps"], required_phrases=["Ticket:"])
    good = "## Summary\nAll fine.\n**Next steps**: none.\nTicket: 42"
    assert score_case(report, good).passed
    assert not score_case(report, "Summary: fine. Ticket: 42").passed  # no "Next steps" section
    as_json = GoldenCase(prompt="p", json=True, contains=["alice"])
    assert score_case(as_json, '```json\n{"name": "Alice"}\n```').passed
    assert not score_case(as_json, "name: Alice").passed


def test_rouge_l_scores_chinese_by_character():
    assert rouge_l("晴天时天空是蓝色的。", "晴天时天空是蓝色的。") == 1.0
    assert 0.5 < rouge_l("天空是蓝色的", "晴天时天空是蓝色的。") < 1.0
    assert rouge_l("完全不同", "晴天时天空是蓝色的。") == 0.0


def test_golden_summary_and_bad_golden_files(tmp_path):
    results = [score_case(GoldenCase(prompt="a", expected="x"), "x"), score_case(GoldenCase(prompt="b", expected="y"), "z")]
    summary = summarise_golden(results)
    assert (summary.cases, summary.passed, summary.pass_rate, summary.exact, summary.format) == (2, 1, 0.5, 0.5, None)
    path = tmp_path / "golden.jsonl"
    path.write_text(json.dumps({"prompt": "hi", "expected": "hello"}) + "\n\n" + json.dumps({"prompt": "x", "json": True}) + "\n")
    assert [c.prompt for c in read_golden(path)] == ["hi", "x"]
    path.write_text(json.dumps({"prompt": "hi", "expectd": "typo"}) + "\n")
    with pytest.raises(InvalidRequestError, match=r"golden.jsonl:1: not a golden case \(unknown keys \['expectd'\]\)"):
        read_golden(path)
    path.write_text("not json\n")
    with pytest.raises(InvalidRequestError, match="golden.jsonl:1"):
        read_golden(path)


def loss(value: float) -> LossReport:
    return LossReport.of(value * 100, 100)


def test_gate_needs_a_better_held_out_loss_and_no_forgetting():
    general = {"base": loss(2.0), "candidate": loss(2.05)}
    passed = decide({"base": loss(1.5), "candidate": loss(0.8)}, general, margin=0.1)
    assert passed.passed and passed.install and passed.compared_with == "base"
    # Against a live version, the live version is the bar, not the base.
    worse = decide({"base": loss(1.5), "live": loss(0.7), "candidate": loss(0.8)}, general, margin=0.1)
    assert not worse.install and worse.compared_with == "live" and "does not beat the live's 0.7000" in worse.reasons[0]
    # Forgetting: general perplexity e^2.3 against e^2.0 is a 35% rise.
    forgot = decide({"base": loss(1.5), "candidate": loss(0.8)}, {"base": loss(2.0), "candidate": loss(2.3)}, margin=0.1)
    assert not forgot.install and "over the 10% margin" in forgot.reasons[1]
    forced = decide({"base": loss(1.5), "candidate": loss(0.8)}, {"base": loss(2.0), "candidate": loss(2.3)}, margin=0.1, force=True)
    assert forced.install and forced.forced and not forced.passed and forced.reasons[-1] == "installed anyway: --force"
    empty = decide({}, general, margin=0.1)
    assert not empty.install and empty.reasons[0] == "no held-out examples to compare on"
