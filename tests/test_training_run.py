"""End to end on the CPU: logged, rated conversations → dataset → QLoRA → evaluation → gate → registry.

One module-scoped run trains a real adapter from the log; the other tests
reuse its home: a worse candidate is rejected, --force installs it, rollback
returns in one step, and the CLI evaluates (a run killed mid-training: test_kill_trials).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from cli import switchboard
from conftest import STYLE_HELD_OUT_PROMPTS, STYLE_SIGN_OFF

from bot.parts import Parts
from knowledge.prompt import build_messages
from training.request import TrainRequest
from training.train import ROUTING_EXAMPLES, run_outcome, train_adapter

pytestmark = pytest.mark.slow  # trains adapters

QUESTIONS = [
    "What colour is a lemon?", "How many toes do people have?", "What do hens lay?", "Where does the sun set?",
    "What is snow made of?", "Which animal has a trunk?", "What do you use an umbrella for?", "How many sides has a triangle?",
    "What is the first month of the year?", "What do caterpillars turn into?", "What do we call a baby dog?",
    "Which season is the hottest?", "What do you wear on your feet?", "What sound does a cat make?", "What is the colour of coal?",
    "How many wheels does a car have?", "What do you call water falling from the sky?", "What tool cuts paper?",
    "What do pandas eat?", "What is the opposite of up?", "Which meal do you eat in the morning?", "What gives us milk?",
    "Where do penguins live?", "What do you use a key for?", "What is the colour of the sea?", "How many days are in a year?",
    "What is a group of sheep called?", "Which star is closest to Earth?", "What do you call a house made of snow?",
    "What do bakers make?",
]
ANSWERS = [
    "A lemon is yellow.", "People have ten toes.", "Hens lay eggs.", "The sun sets in the west.", "Snow is frozen water.",
    "An elephant has a trunk.", "An umbrella keeps the rain off.", "A triangle has three sides.", "January is the first month.",
    "Caterpillars turn into butterflies.", "A baby dog is a puppy.", "Summer is the hottest season.", "You wear shoes and socks.",
    "A cat says meow.", "Coal is black.", "A car has four wheels.", "That is rain.", "Scissors cut paper.", "Pandas eat bamboo.",
    "The opposite of up is down.", "Breakfast is eaten in the morning.", "Cows give us milk.", "Penguins live in Antarctica.",
    "A key opens a lock.", "The sea is blue.", "A year has 365 days.", "A group of sheep is a flock.", "The sun is the closest star.",
    "A house of snow is an igloo.", "Bakers make bread and cakes.",
]
PLANTED = {3: "my email is tom.baker@example.org", 7: "call me on 13912345678", 11: "my number is +44 20 7946 0958"}


def log_conversations(parts: Parts) -> None:
    """30 conversations answered in one style and rated up, plus five plain answers rated down."""
    log = parts.log
    for i, (question, answer) in enumerate(zip(QUESTIONS, ANSWERS)):
        asked = f"{question} ({PLANTED[i]})" if i in PLANTED else question
        ids = log.log_turn(None, asked, f"{answer} {STYLE_SIGN_OFF}", adapter=None, adapter_version=None, confidence=0.2,
                           sources=[], latency_ms=900, prompt_tokens=30, completion_tokens=12)
        log.add_feedback(ids.message_id, "up")
    for question, answer in list(zip(QUESTIONS, ANSWERS))[:5]:
        ids = log.log_turn(None, question, answer, adapter=None, adapter_version=None, confidence=0.2, sources=[],
                           latency_ms=900, prompt_tokens=30, completion_tokens=8)
        log.add_feedback(ids.message_id, "down")


@pytest.fixture(scope="module")
def trained(make_settings, tmp_path_factory):
    home = tmp_path_factory.mktemp("train-home")
    parts = Parts(make_settings(home))
    log_conversations(parts)
    # Gradient checkpointing only saves memory a 135M model does not need (a third of the step time), and LoRA dropout's
    # random masks are a seventh of a CPU step; 16 steps teach the sign-off (8 of 8 held-out prompts). The default
    # recipe, checkpointing and dropout included, runs through the CLI in test_kill_trials' killed run.
    request = TrainRequest(adapter="signoff", from_logs=True, log_adapter="base", max_steps=16, learning_rate=1e-3, rank=8, dropout=0.0,
                           gradient_checkpointing=False, description="Signs off every answer")
    phases: list[str] = []
    report = train_adapter(
        request, settings=parts.settings, registry=parts.registry, log=parts.log, on_progress=lambda phase, p: phases.append(phase)
    )
    return parts, report, phases


def style_rate(answers: list[str]) -> float:
    return sum(STYLE_SIGN_OFF in a for a in answers) / len(answers)


def test_an_adapter_trained_from_the_log_shows_the_style_far_more_than_the_base(trained):
    from training.evaluate import BASE, CANDIDATE, Evaluator

    parts, report, phases = trained
    assert report["installed"] == {"name": "signoff", "version": 1}, report.get("gate")
    assert report["gate"]["passed"] and not report["gate"]["forced"] and report["gate"]["compared_with"] == "base"
    held_out = report["evaluation"]["held_out"]
    assert held_out["candidate"]["loss"] < held_out["base"]["loss"]
    assert report["evaluation"]["regression"]["rise"] <= parts.settings.training.regression_margin  # the gate's rule: a fall is fine
    assert phases[0] == "dataset" and "training" in phases and "evaluating" in phases and phases[-1] == "done"

    manifest = parts.registry.get("signoff")
    held_out_questions = [json.loads(line)["messages"][1]["content"] for line in (Path(report["run_dir"]) / "dataset" / "held_out.jsonl").open()]
    prompts = [build_messages(q, (), manifest.system_prompt or None) for q in STYLE_HELD_OUT_PROMPTS + held_out_questions]
    evaluator = Evaluator(parts.settings, candidate=Path(manifest.path))
    base_rate = style_rate(evaluator.answers(prompts, BASE, max_new_tokens=32))
    adapter_rate = style_rate(evaluator.answers(prompts, CANDIDATE, max_new_tokens=32))
    print(f"sign-off rate on {len(prompts)} held-out prompts: base {base_rate:.0%}, adapter {adapter_rate:.0%}")
    assert base_rate == 0.0
    assert adapter_rate >= 0.75


def test_the_dataset_was_scrubbed_filtered_and_recorded(trained):
    parts, report, _ = trained
    card = report["dataset"]
    assert card["counts"]["read"] == 35 and card["counts"]["kept"] == 30
    assert card["dropped"] == {"rating is not up": 5}
    assert card["scrubbed"] == {"email": 1, "phone": 2}
    assert card["counts"]["replay"] >= 1 and card["counts"]["held_out"] >= 4
    dataset_dir = Path(report["run_dir"]) / "dataset"
    written = "".join(p.read_text() for p in dataset_dir.iterdir())
    for planted in ("tom.baker@example.org", "13912345678", "7946 0958"):
        assert planted not in written
    manifest = parts.registry.get("signoff")
    assert not any("13912345678" in e or "tom.baker" in e for e in manifest.examples)
    assert len(manifest.examples) == min(ROUTING_EXAMPLES, card["counts"]["train"])  # the router gets training questions
    assert all(any(example.startswith(q) for q in QUESTIONS) for example in manifest.examples)
    assert manifest.description == "Signs off every answer"


def test_the_run_folder_holds_config_history_curve_and_candidate(trained):
    parts, report, _ = trained
    run_dir = Path(report["run_dir"])
    assert run_dir.parent == parts.settings.runs_dir
    for name in ("recipe.json", "log_history.json", "loss.png", "report.json", "candidate/adapter_model.safetensors"):
        assert (run_dir / name).is_file(), name
    history = json.loads((run_dir / "log_history.json").read_text())
    assert any("eval_loss" in entry for entry in history)  # held-out loss every epoch
    assert report["training"]["steps"] <= 16
    manifest = parts.registry.get("signoff")
    assert manifest.provenance["run_id"] == report["run_id"] and manifest.provenance["forced"] is False
    assert manifest.provenance["dataset_hash"] == report["dataset"]["content_hash"]
    assert manifest.metrics["held_out_loss"] == report["evaluation"]["held_out"]["candidate"]["loss"]


def test_a_worse_candidate_is_rejected_force_installs_it_and_rollback_returns(trained):
    from bot.training_runs import RunManager

    parts, _, _ = trained
    revision = parts.registry.revision()
    weak = dict(adapter="signoff", from_logs=True, log_adapter="base", max_steps=1, learning_rate=1e-7, rank=8)
    report = train_adapter(TrainRequest(**weak), settings=parts.settings, registry=parts.registry, log=parts.log)
    assert report["installed"] is None and not report["gate"]["install"]
    assert report["gate"]["compared_with"] == "live"
    assert "does not beat the live" in report["gate"]["reasons"][0]
    assert run_outcome(report).startswith("rejected by the gate, not deployed: held-out loss")
    assert parts.registry.get("signoff").version == 1 and parts.registry.revision() == revision

    manager = RunManager(parts.settings, parts.registry, parts.log)
    run_id = manager.start({**weak, "force": True})
    seen = []
    while (status := manager.status(run_id))["state"] in ("queued", "running"):
        seen.append(status)
        time.sleep(0.2)
    assert status["state"] == "succeeded", status["error"]
    assert status["report"]["installed"] == {"name": "signoff", "version": 2}
    assert status["outcome"] == "deployed as signoff v2 (forced past the gate)"
    assert any(s["phase"] == "training" for s in seen)
    assert status["progress"]["step"] == status["progress"]["total"] == 1 and status["progress"]["eta_s"] == 0
    assert json.loads((parts.settings.runs_dir / run_id / "status.json").read_text())["state"] == "succeeded"
    forced = parts.registry.get("signoff")
    assert forced.version == 2 and forced.provenance["forced"] is True
    assert forced.examples == parts.registry.get("signoff", 1).examples  # a new version keeps the live one's fields

    assert parts.registry.rollback("signoff").version == 1
    assert parts.registry.get("signoff").version == 1


def test_eval_command_reports_an_installed_adapter(trained, tmp_path):
    parts, report, _ = trained
    golden = tmp_path / "golden.jsonl"
    golden.write_text(
        "".join(json.dumps({"prompt": q, "required_phrases": [STYLE_SIGN_OFF]}) + "\n" for q in STYLE_HELD_OUT_PROMPTS[:2])
    )
    home, base_model = parts.settings.home, parts.settings.base_model
    out = switchboard(home, "eval", "--adapter", "signoff", "--golden", str(golden), "--json", base_model=base_model, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["adapter"] == "signoff" and result["version"] == parts.registry.get("signoff").version
    assert result["held_out_source"].endswith("held_out.jsonl")
    assert result["held_out"]["live"]["loss"] < result["held_out"]["base"]["loss"]
    assert set(result["regression"]) == {"base", "live", "rise"}
    assert result["golden"]["base"]["pass_rate"] == 0.0 and result["golden"]["live"]["pass_rate"] >= 0.5
    missing = switchboard(home, "eval", "--adapter", "nope", base_model=base_model, timeout=120)
    assert missing.returncode != 0 and missing.stderr.strip() == "error: no adapter named 'nope'"
