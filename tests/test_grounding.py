"""Answers a team can trust: citations and facts checked against the sources, gaps admitted, scripts kept.

The checker is exercised on written answers (table below) and on the real
model's answers through the pipeline: whatever the model writes, what is
shown cites only given sources and states only facts they hold.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from bot.turn import TurnRequest
from core.sections import GroundingConfig
from knowledge.grounding import audit_answer, ground_answer
from knowledge.grounding.facts import extract_facts, source_facts
from knowledge.grounding.script import chinese_script
from knowledge.passage import Passage
from tests.conftest import DEMO_DIR, demo_manifest

PASSAGES = [
    Passage("w", "warranty.md", "Backpacks and bags are covered for 3 years. Tents are covered for 2 years. "
            "Call the warranty line on +1 206 555 0147 or write to warranty@shop.example.", section="Warranty periods"),
    Passage("f", "faq.csv", "Which payment methods do you accept? Visa, Mastercard and PayPal. "
            "We do not accept cryptocurrency such as bitcoin."),
    Passage("a", "act.md", "The trader refunds every payment within 14 days of the withdrawal.",
            section="Article 12 — Refunds"),
    Passage("z", "售后服务指南.md", "背包保修三年。退货请在30天内申请，运费由我们承担。"),
]
QUESTION = "How long is the warranty on a backpack?"
REFUSAL = "I could not find that in our sources."

# (generated answer, action, what the shown answer must contain, what it must not)
ANSWERS = [
    ("Backpacks are covered for 3 years [1].", "passed", "3 years [1]", None),
    ("Backpacks are covered for three years [1].", "passed", "three years [1]", None),
    ("Backpacks are covered for 3 years [7].", "repaired", "3 years [1]", "[7]"),
    ("Backpacks are covered for 3 years.\nNext step: call 555 0147.", "repaired", "555 0147 [1]", None),
    ("Under Article 12 the trader refunds within 14 days [1].", "repaired", "14 days [3]", "[1]"),
    ("Call us on 1-800-556-9347 [1].", "replaced", "“Backpacks and bags are covered for 3 years.", "1-800"),
    ("Backpacks are covered for 5 years [1].", "replaced", "[1]", "5 years"),
    ("Under Article 9 you get your money back [3].", "replaced", "[1]", "Article 9"),
    ("Write to help@invented.example [2].", "replaced", "[1]", "invented"),
    ("Bananas are yellow and curved.", "replaced", "[1]", "Bananas"),
    ("Backpacks and bags are covered, tents too [1].", "replaced", "covered for 3 years", "tents too"),
    ("Backpacks are covered for 3 years [1].\nNext step: call us on 1-800-556-9347.", "repaired", "3 years [1].", "1-800"),
]


@pytest.mark.parametrize(("generated", "action", "shown", "hidden"), ANSWERS)
def test_every_shown_answer_cites_given_sources_and_only_states_their_facts(generated, action, shown, hidden):
    report = ground_answer(generated, PASSAGES, QUESTION, GroundingConfig(), REFUSAL)
    assert report.action == action, report.problems
    assert shown in report.answer and (hidden is None or hidden not in report.answer)
    assert report.generated == generated and report.clean == (action == "passed")
    audit = audit_answer(report.answer, PASSAGES, QUESTION)
    assert audit.cites and audit.citations_valid and audit.facts_grounded, audit


def test_a_sentence_stating_what_no_source_holds_is_dropped_and_the_turn_is_no_training_example():
    report = ground_answer("Backpacks are covered for 3 years [1].\nNext step: call us on 1-800-556-9347.", PASSAGES,
                           QUESTION, GroundingConfig(), REFUSAL)
    assert (report.action, report.answer) == ("repaired", "Backpacks are covered for 3 years [1].")
    assert report.grounded is False  # shown repaired, but the model invented a number: not a positive example
    assert ground_answer("Backpacks are covered for 3 years [7].", PASSAGES, QUESTION, GroundingConfig(),
                         REFUSAL).grounded  # a wrong citation number is repaired and states nothing false


def test_the_audit_catches_what_the_checks_replace():
    """The benchmark's judge is not the checker's echo: it fails the raw answers the checker had to fix."""
    for generated, action, _, _ in ANSWERS:
        report = ground_answer(generated, PASSAGES, QUESTION, GroundingConfig(), REFUSAL)
        if any(p.startswith("unanswered") for p in report.problems):
            continue  # grounded but not an answer: the audit judges grounding only
        audit = audit_answer(generated, PASSAGES, QUESTION)
        clean = audit.cites and audit.citations_valid and audit.facts_grounded
        assert clean == (action == "passed"), generated


def test_facts_are_compared_in_normal_form():
    source = source_facts("Covered for 3 years; call +1 206 555 0147; 10,000 mm; 背包保修三年，30天内退货；第十二條")
    for said in ("three years", "a 3-year warranty", "555-0147", "(206) 555 0147", "10000 mm", "三年", "三十天",
                 "Article 12"):
        assert all(source.holds(fact) for fact in extract_facts(said).items), said
    for said in ("4 years", "1-800-556-9347", "10,500 mm", "四年", "Article 9"):
        assert not all(source.holds(fact) for fact in extract_facts(said).items), said
    assert extract_facts("one of our agents will reply [2].\n1. Open the form").items == ()
    quoted = extract_facts("“Fill in the form at https://www.shop.example/warranty.” [3]").items
    assert [(f.kind, f.key) for f in quoted] == [("url", "shop.example/warranty")]


def test_an_answer_citing_nothing_gets_the_citation_of_the_source_it_rests_on():
    report = ground_answer("Backpacks and bags are covered, tents too.", PASSAGES, "Are backpacks covered?",
                           GroundingConfig(), REFUSAL)
    assert (report.action, report.answer) == ("repaired", "Backpacks and bags are covered, tents too [1]."), report.problems


def test_an_answer_without_the_fact_asked_for_is_no_answer():
    """'Who do I call?' answered without a number: the sentence holding the number is quoted instead."""
    report = ground_answer("You can call our friendly team any time [1].", PASSAGES,
                           "Who do I call about a broken backpack?", GroundingConfig(), REFUSAL)
    assert report.action == "replaced" and "555 0147" in report.answer, report.problems
    assert any(p.startswith("unanswered") for p in report.problems)


def test_a_fact_the_user_gave_needs_no_source():
    report = ground_answer("You bought it 14 months ago, within the 3 years [1].", PASSAGES,
                           "I bought my backpack 14 months ago, is it covered?", GroundingConfig(), REFUSAL)
    assert report.action == "passed", report.problems


def test_nothing_to_quote_gives_the_adapters_own_refusal():
    report = ground_answer("It costs 99 euros [1].", PASSAGES, "Do you sell kayaks?", GroundingConfig(), REFUSAL)
    assert report.action == "replaced" and report.answer == REFUSAL


def test_answers_keep_the_users_chinese_script():
    assert chinese_script("退貨運費怎麼算？") == "traditional" and chinese_script("退货运费怎么算？") == "simplified"
    traditional = ground_answer("退货运费由我们承担 [4]。", PASSAGES, "退貨運費誰付？", GroundingConfig(), REFUSAL)
    assert traditional.answer == "退貨運費由我們承擔 [4]。", traditional.problems
    simplified = ground_answer("退貨運費由我們承擔 [4]。", PASSAGES, "退货运费谁付？", GroundingConfig(), REFUSAL)
    assert simplified.answer == "退货运费由我们承担 [4]。"
    kept = ground_answer("退货运费由我们承担 [4]。", PASSAGES, "退貨運費誰付？", GroundingConfig(keep_script=False), REFUSAL)
    assert kept.answer == "退货运费由我们承担 [4]。"


def test_checks_off_show_the_answer_as_generated():
    off = GroundingConfig(check_citations=False, check_facts=False, keep_script=False)
    report = ground_answer("Call 1-800-556-9347 [7].", PASSAGES, QUESTION, off, REFUSAL)
    assert (report.action, report.answer) == ("unchecked", "Call 1-800-556-9347 [7].")


# ---- through the pipeline, on the real model ------------------------------------------------------


@pytest.mark.parametrize(
    "question",
    ["What is the warranty on your backpacks?", "How many days do I have to return an item?",
     "What does Article 6 say about the guarantee?", "Can I return a tent after thirty days?"],
)
def test_real_answers_are_checked_before_anyone_sees_them(chat_parts, question):
    """Random-weight adapters write gibberish; what reaches the user is still cited and grounded."""
    pipeline = chat_parts.pipeline
    stream = pipeline.stream(pipeline.prepare(TurnRequest(question)))
    pieces = list(stream)
    result = stream.result
    assert result.sources, "the question reaches retrieval"
    assert pieces == [result.answer]  # released whole, after its check
    passages = [Passage(s["id"], s["source"], s["text"], section=s["section"]) for s in result.sources]
    if result.answer != demo_manifest(result.adapter)["no_answer"].strip():
        audit = audit_answer(result.answer, passages, question)
        assert audit.cites and audit.citations_valid and audit.facts_grounded, (result.answer, audit)
    with sqlite3.connect(chat_parts.settings.conversations_db) as db:
        route, checks, content = db.execute(
            "SELECT route, checks, content FROM messages WHERE id = ?", (result.message_id,)
        ).fetchone()
    checks, route = json.loads(checks), json.loads(route)
    assert content == result.answer and checks["answer"] == result.answer
    assert checks["action"] == result.checks.action and checks["generated"] == result.checks.generated
    assert route["adapter"] == result.adapter and set(route["retrieval"]) == {"support", "legal"}


def test_a_turn_that_failed_its_checks_is_no_positive_training_example(chat_parts):
    """A thumbs-up on a replaced answer does not make it training data; an operator's correction does."""
    from training.dataset import LogFilters, build_dataset

    log = chat_parts.log
    ids = []
    for action in ("replaced", "passed", "replaced"):
        turn = log.log_turn(None, f"Question with a {action} answer about gadget {len(ids)}?", f"An answer that {action} "
                            f"its checks, number {len(ids)}.", adapter="grounding-probe", adapter_version=1,
                            confidence=1.0, sources=[], latency_ms=1.0, prompt_tokens=1, completion_tokens=1,
                            checks={"action": action, "problems": ["ungrounded phone"] if action == "replaced" else []})
        log.add_feedback(turn.message_id, "up")
        ids.append(turn.message_id)
    log.add_feedback(ids[2], "up", correction="The corrected answer the operator wrote for gadget two.")
    dataset = build_dataset(log=log, filters=LogFilters(adapter="grounding-probe"))
    texts = [chat[-1]["content"] for chat in dataset.train + dataset.held_out]
    assert any("passed its checks" in t for t in texts) and any("corrected answer" in t for t in texts)
    assert not any("replaced its checks" in t for t in texts)
    assert dataset.card.dropped == {"answer failed the source checks and has no correction": 1}
    assert dataset.card.warnings and "nothing is held out" in dataset.card.warnings[0]


# ---- retrieval-aware routing --------------------------------------------------------------------

RECALL = "What should I do with a gas canister from batch GC-2291?"
RECALL_DOCUMENT = (
    "# Safety notice\n\nGas canisters from batch GC-2291 are recalled because the valve can leak. "
    "Stop using any canister from batch GC-2291 and return it to any store for a refund of 12 euros per canister.\n"
)


@pytest.fixture(scope="module")
def shop(make_settings, make_random_adapter, tmp_path_factory):
    """Its own home: a support adapter whose routing examples know nothing of recalls, and a legal one."""
    from bot.parts import Parts

    home = tmp_path_factory.mktemp("grounding-home")
    parts = Parts(make_settings(home, generation={"max_new_tokens": 8}))
    for seed, name, examples in (
        (51, "support", ["Where is my order?", "How long does shipping take?", "Can I change my delivery address?"]),
        (52, "legal", demo_manifest("legal")["examples"]),
    ):
        fields = demo_manifest(name)
        parts.registry.install(
            make_random_adapter(seed), name, examples=examples, collections=fields["collections"],
            system_prompt=fields["system_prompt"], no_answer=fields["no_answer"],
        )
    parts.knowledge.ingest([DEMO_DIR / "support" / "knowledge" / "shipping.html"], "support")
    parts.knowledge.ingest([DEMO_DIR / "legal" / "knowledge" / "model_consumer_goods_act.md"], "legal")
    yield parts
    parts.knowledge.close()


def test_knowledge_added_to_a_collection_changes_routing_without_retraining(shop, tmp_path):
    before = shop.pipeline.route(RECALL)
    assert before.adapter is None and before.reason == "below-threshold"
    assert before.retrieval["support"] < shop.settings.router.retrieval_threshold

    (tmp_path / "safety.md").write_text(RECALL_DOCUMENT, encoding="utf-8")
    shop.knowledge.ingest([tmp_path / "safety.md"], "support")
    after = shop.pipeline.route(RECALL)
    assert (after.adapter, after.reason) == ("support", "retrieval")
    assert after.scores["support"] < shop.settings.router.threshold <= after.retrieval["support"]

    result = shop.pipeline.answer(TurnRequest(RECALL))
    assert result.adapter == "support" and result.route_reason == "retrieval"
    assert result.sources[0]["source"] == "safety.md"
    passages = [Passage(s["id"], s["source"], s["text"]) for s in result.sources]
    audit = audit_answer(result.answer, passages, RECALL)
    assert "GC-2291" in result.answer and audit.cites and audit.facts_grounded, result.answer

    off = shop.settings.model_copy(update={"router": shop.settings.router.model_copy(update={"retrieval_threshold": 1.0})})
    from bot.router import Router

    examples_only = Router(shop.encoder, off.router)
    examples_only.sync(shop.registry.list())
    assert examples_only.route(RECALL, retrieval=after.retrieval).adapter is None  # the switch turns it off


def test_a_question_its_examples_send_elsewhere_goes_where_the_documents_answer_it(shop):
    """The legal adapter's examples talk of refunds; the shop's shipping page answers a shipping-cost question."""
    question = "How much does express delivery cost for a parcel?"
    route = shop.pipeline.route(question)
    assert route.adapter == "support", route
    assert route.retrieval["support"] > route.retrieval["legal"]


def test_the_route_command_shows_the_retrieval_signal(shop):
    from cli import switchboard

    done = switchboard(shop.settings.home, "route", "How much does express delivery cost?", "--json",
                       base_model=shop.settings.base_model)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(done.stdout)
    assert data["adapter"] == "support" and set(data["retrieval"]) == {"support", "legal"}
