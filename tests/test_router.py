"""The router on the demo adapters with the real encoder: accuracy, follow-ups, overrides, live updates, the CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from cli import switchboard

from adapters.manifest import Manifest
from adapters.registry import Registry
from bot.calibration import LabelledMessage, Scored, best_threshold, calibrate
from bot.router import Router
from core.errors import InvalidRequestError, NotFoundError
from core.settings import RouterConfig, load_settings

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo"

# Written for this file, worded unlike the manifests' examples, and not used to choose any setting.
EXTRA_CASES = [
    ("My order number is 4471 and it never showed up, can you check?", "support"),
    ("I'd like to send back the rain jacket, it doesn't fit", "support"),
    ("Do you accept Apple Pay?", "support"),
    ("请问可以开发票吗？", "support"),
    ("我想把外套换成小一号的", "support"),
    ("Can a shop's terms say I lose my right to a repair?", "legal"),
    ("What remedies does the Act give me when a product is faulty after a year?", "legal"),
    ("How many days do I have to cancel an online purchase under the statute?", "legal"),
    ("消费者的法定权利可以通过合同排除吗？", "legal"),
    ("撤回权的期限是多少天？", "legal"),
    ("Write a haiku about autumn leaves", None),
    ("What is the capital of Australia?", None),
    ("帮我写一首关于春天的诗", None),
    ("Recommend a good book about history", None),
]


def demo_fields(name: str) -> dict:
    return json.loads((DEMO / name / "manifest.json").read_text(encoding="utf-8"))


def demo_manifests() -> list[Manifest]:
    return [Manifest(name=name, version=1, examples=demo_fields(name)["examples"]) for name in ("support", "legal")]


def labelled_set() -> list[LabelledMessage]:
    lines = (DEMO / "routing_eval.jsonl").read_text(encoding="utf-8").splitlines()
    cases = [LabelledMessage(**json.loads(line)) for line in lines if line.strip()]
    return cases + [LabelledMessage(text, adapter) for text, adapter in EXTRA_CASES]


@pytest.fixture(scope="module")
def router(encoder) -> Router:
    router = Router(encoder, RouterConfig())
    router.sync(demo_manifests())
    return router


# ---- accuracy and calibration -------------------------------------------------------------------


@pytest.fixture(scope="module")
def routed(router) -> list[tuple[LabelledMessage, object]]:
    """Every labelled message with the route the router gives it, one message at a time as in serving."""
    return [(case, router.route(case.text)) for case in labelled_set()]


def has_chinese(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def test_routes_the_labelled_set_in_english_and_chinese(routed):
    assert len(routed) >= 40
    misses = [(case.text, case.adapter, route.adapter) for case, route in routed if route.adapter != case.adapter]
    accuracy = 1 - len(misses) / len(routed)
    assert accuracy >= 0.9, f"accuracy {accuracy:.3f}; misses: {misses}"
    chinese = [case for case, _ in routed if has_chinese(case.text)]
    chinese_misses = [m for m in misses if has_chinese(m[0])]
    assert len(chinese) >= 20 and len(chinese_misses) / len(chinese) <= 0.15, chinese_misses
    off_topic = [case for case, _ in routed if case.adapter is None]
    assert len(off_topic) >= 15 and sum(1 for m in misses if m[1] is None) <= 1, misses
    for _, route in routed:
        assert route.confidence == (route.scores[route.adapter] if route.adapter else 1 - max(route.scores.values()))


def test_calibration_report_agrees_with_routing(router, routed):
    cases = [case for case, _ in routed]
    report = calibrate(router, cases)
    assert report.count == len(cases) and report.threshold == router.config.threshold
    right = sum(route.adapter == case.adapter for case, route in routed)
    assert report.accuracy == pytest.approx(right / len(cases))
    assert sum(sum(row.values()) for row in report.confusion.values()) == len(cases)
    for true in ("support", "legal", "base"):
        for predicted in ("support", "legal", "base"):
            expected = sum(
                (case.adapter or "base", route.adapter or "base") == (true, predicted) for case, route in routed
            )
            assert report.confusion[true][predicted] == expected
    legal = report.per_adapter["legal"]
    assert legal["precision"] == pytest.approx(
        report.confusion["legal"]["legal"] / sum(route.adapter == "legal" for _, route in routed)
    )
    assert legal["recall"] == pytest.approx(report.confusion["legal"]["legal"] / legal["support"])
    # The threshold found does what it promises on the routes' own scores.
    assert report.best_accuracy >= report.accuracy
    again = 0
    for case, route in routed:
        best = max(route.scores, key=route.scores.get)
        again += (best if route.scores[best] >= report.best_threshold else None) == case.adapter
    assert again / len(cases) == pytest.approx(report.best_accuracy)


def test_best_threshold_is_the_middle_of_the_widest_best_range():
    scored = [
        Scored("a", "a", 0.6),
        Scored("a", "a", 0.5),
        Scored(None, "a", 0.2),
        Scored(None, "b", 0.1),
        Scored("b", "a", 0.4),  # wrong adapter: never right, whatever the threshold
    ]
    threshold, accuracy = best_threshold(scored)
    assert accuracy == pytest.approx(4 / 5)
    assert threshold == pytest.approx(0.3)  # (0.2, 0.4] is wider than (0.4, 0.5], both at 4/5


# ---- conversation, override, bad input ----------------------------------------------------------


def test_short_follow_ups_stay_with_the_previous_adapter_unless_they_clearly_belong_elsewhere(router):
    vague = "what about in Chinese?"
    assert router.route(vague).adapter is None  # on its own it says nothing
    assert router.route(vague, previous="legal").adapter == "legal"
    assert router.route(vague, previous="support").adapter == "support"
    assert router.route(vague, previous="legal").reason == "follow-up"
    assert router.route("and for returns?", previous="support").adapter == "support"
    assert router.route("那退货呢？", previous="support").adapter == "support"
    # short, but about the other adapter's subject
    assert router.route("and the statutory guarantee period?", previous="support").adapter == "legal"
    assert router.route("退货运费谁付？", previous="legal").adapter == "support"
    # not short: routed on its own
    assert router.route("What's the weather like in Paris this weekend?", previous="support").adapter is None
    assert router.route("vague question", previous="removed-long-ago").adapter is None  # unknown: ignored


def test_override_bypasses_routing(router):
    support_question = "Where is my parcel? It was due on Monday."
    assert router.choose(support_question, "auto").adapter == "support"
    forced = router.choose(support_question, "legal")
    assert (forced.adapter, forced.confidence, forced.reason, forced.scores) == ("legal", 1.0, "requested", {})
    assert router.choose(support_question, "base").adapter is None
    assert router.choose(support_question, None).adapter == "support"
    with pytest.raises(NotFoundError, match="no enabled adapter named 'tax'"):
        router.choose(support_question, "tax")
    with pytest.raises(InvalidRequestError, match="empty"):
        router.choose("   ", "legal")


def test_bad_input(router):
    for empty in ("", "   \n\t"):
        with pytest.raises(InvalidRequestError, match="the message is empty"):
            router.route(empty)
    with pytest.raises(InvalidRequestError, match="text"):
        router.route(None)  # type: ignore[arg-type]
    huge = "My parcel never arrived and tracking has not moved for a week. " * 1600
    assert len(huge) > 100_000
    started = time.perf_counter()
    route = router.route(huge)
    assert route.adapter == "support" and time.perf_counter() - started < 5
    huge_chinese = "我的包裹还没送到，物流一直没有更新。" * 6000
    assert router.route(huge_chinese).adapter == "support"
    for noise in ("？？？", "🙂🙂", "12345", "....."):
        route = router.route(noise)
        assert route.adapter is None and set(route.scores) == {"support", "legal"}
        assert all(0.0 <= s <= 1.0 for s in route.scores.values())


def test_keywords_and_adapters_without_examples(encoder):
    router = Router(encoder, RouterConfig())
    router.sync(
        [
            *demo_manifests(),
            Manifest(name="payroll", version=1, keywords=["payslip", "工资单"]),
            Manifest(name="drafts", version=1),  # nothing to route on: reachable by name only
        ]
    )
    assert router.adapters == ["drafts", "legal", "payroll", "support"]
    assert router.routable == ["legal", "payroll", "support"]
    assert router.route("Where can I download my payslip for March?").adapter == "payroll"
    assert router.route("三月的工资单在哪里下载？").adapter == "payroll"
    assert router.route("Where is my parcel? It was due on Monday.").adapter == "support"
    for message in ("Please draft a letter to my landlord", "drafts"):
        assert "drafts" not in router.route(message).scores and router.route(message).adapter != "drafts"
    assert router.choose("Please draft a letter to my landlord", "drafts").adapter == "drafts"


# ---- live updates ---------------------------------------------------------------------------------


def test_registry_changes_reach_the_router_without_a_restart(tmp_path, make_settings, make_random_adapter):
    from bot.parts import Parts

    parts = Parts(make_settings(tmp_path / "home"))
    weights = make_random_adapter(seed=41)
    support, legal = demo_fields("support"), demo_fields("legal")
    parts.registry.install(weights, "support", examples=support["examples"])
    legal_question = "Is a clause that waives my statutory guarantee legally valid?"

    router = parts.router
    assert router.adapters == ["support"]
    assert parts.router.follow(parts.registry) is False  # nothing changed: no work

    # Another process changes the registry: only its revision file tells us.
    other = Registry(parts.settings.adapters_dir, parts.fingerprint)
    other.install(weights, "legal", examples=legal["examples"])
    assert router.route(legal_question).adapter != "legal"
    assert parts.router.follow(parts.registry) is True
    assert router.route(legal_question).adapter == "legal"

    other.set_status("legal", "disabled")
    parts.router.follow(parts.registry)
    assert router.adapters == ["support"] and "legal" not in router.route(legal_question).scores
    with pytest.raises(NotFoundError):
        router.choose(legal_question, "legal")

    # Re-enabling, a new version with one more example: only what was never embedded is embedded.
    other.set_status("legal", "enabled")
    report = router.sync(other.list(), revision=other.revision())
    assert (report.added, report.embedded) == (["legal"], 0)
    other.install(weights, "legal", examples=[*legal["examples"], "Can a trader charge a fee for a statutory repair?"])
    report = router.sync(other.list(), revision=other.revision())
    assert (report.updated, report.embedded) == (["legal"], 1)
    assert router.sync(other.list(), revision=other.revision() - 1).embedded == 0  # an older view changes nothing
    assert router.route(legal_question).adapter == "legal"

    other.remove("legal")
    assert parts.router.follow(parts.registry) is True
    assert router.adapters == ["support"] and router.route(legal_question).adapter != "legal"


# ---- the command line -----------------------------------------------------------------------------


def test_cli_routes_calibrates_and_stores_the_threshold(tmp_path, base_model_dir, make_random_adapter):
    home = tmp_path / "home"
    home.mkdir()
    toml = home / "switchboard.toml"
    toml.write_text(
        f'# my settings\nbase_model = "{base_model_dir}"\n\n[generation]\nmax_new_tokens = 99  # keep\n',
        encoding="utf-8",
    )
    settings = load_settings({"home": home}, environ={})
    registry = Registry(settings.adapters_dir)
    weights = make_random_adapter(seed=41)
    for name in ("support", "legal"):
        registry.install(weights, name, examples=demo_fields(name)["examples"])

    done = switchboard(home, "route", "--eval", str(DEMO / "routing_eval.jsonl"), "--set-threshold", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["count"] == 51 and report["best_accuracy"] >= 0.9
    assert set(report["confusion"]) == {"support", "legal", "base"}
    stored = load_settings({"home": home}, environ={})
    assert stored.router.threshold == report["best_threshold"]
    assert stored.generation.max_new_tokens == 99 and "# keep" in toml.read_text(encoding="utf-8")

    done = switchboard(home, "route", "如果商品有瑕疵，依法我可以要求修理吗？ Under the Act?", "--json")
    assert done.returncode == 0, done.stderr
    routed = json.loads(done.stdout)
    assert routed["adapter"] == "legal" and set(routed["scores"]) == {"support", "legal"}
    assert routed["confidence"] == routed["scores"]["legal"]

    for args, message in (
        (["route", "  "], "the message is empty"),
        (["route", "--set-threshold"], "--set-threshold needs --eval"),
    ):
        done = switchboard(home, *args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), done.stderr
