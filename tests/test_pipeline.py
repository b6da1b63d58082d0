"""The chat pipeline on the real model, Chroma and SQLite: routing, grounding, no-answer, trimming, logging.

Adapters have random weights, so answers are gibberish: the tests check the
structure (who answered, which sources, what was logged), never the wording.
"""

from __future__ import annotations

import json

import pytest
from cli import switchboard

from bot.turn import TurnRequest
from core.errors import InvalidRequestError, NotFoundError
from tests.conftest import demo_manifest

WARRANTY_QUESTION = "What is the warranty on your backpacks?"
OFF_TOPIC = "Which team won the football world cup final in 1966?"


@pytest.fixture(scope="module")
def pipeline(chat_parts):
    return chat_parts.pipeline


def streamed(pipeline, request: TurnRequest):
    """A turn as the server runs it: generated in the stream's worker thread, read piece by piece."""
    stream = pipeline.stream(pipeline.prepare(request))
    pieces = list(stream)
    return stream.result, pieces


def test_routed_turn_is_grounded_cited_and_logged(chat_parts, pipeline):
    turn = pipeline.prepare(TurnRequest(WARRANTY_QUESTION))
    assert turn.adapter == "support" and turn.adapter_version == 1
    assert 0.0 < turn.confidence <= 1.0
    assert turn.passages and {p.collection for p in turn.passages} == {"support"}
    system, user = turn.messages[0]["content"], turn.messages[-1]["content"]
    assert system.startswith(demo_manifest("support")["system_prompt"]) and "[1]" in system
    for number, passage in enumerate(turn.passages, start=1):
        assert f"[{number}] {passage.source}" in user  # the numbers the answer cites are the sources returned

    stream = pipeline.stream(turn)
    pieces = list(stream)
    result = stream.result
    assert pieces == [result.answer]  # an answer with sources is released whole, once checked against them
    assert [s["number"] for s in result.sources] == list(range(1, len(turn.passages) + 1))
    assert [s["id"] for s in result.sources] == [p.id for p in turn.passages]
    assert 0 < result.completion_tokens <= 8
    assert set(result.timings_ms) >= {"route", "retrieve", "prompt", "generate", "log", "first_token", "total"}
    logged = chat_parts.log.history(result.conversation_id, 10)
    assert logged == [{"role": "user", "content": WARRANTY_QUESTION}, {"role": "assistant", "content": result.answer}]


@pytest.mark.parametrize("adapter", ["legal", "support"])
def test_nothing_relevant_answers_in_the_adapter_voice(chat_parts, pipeline, adapter):
    result = pipeline.answer(TurnRequest(OFF_TOPIC, adapter=adapter))
    assert result.adapter == adapter
    assert result.sources == []
    assert result.answer == demo_manifest(adapter)["no_answer"].strip()
    assert result.completion_tokens == 0  # nothing generated, so nothing invented
    assert chat_parts.log.history(result.conversation_id, 2)[-1]["content"] == result.answer


def test_base_answers_without_sources_and_follows_the_conversation(pipeline):
    first, pieces = streamed(pipeline, TurnRequest("Say hello.", adapter="base"))
    assert first.adapter is None and first.sources == [] and first.route_reason == "requested"
    assert len(pieces) >= 2 and "".join(pieces).strip() == first.answer  # nothing to check: it streams
    follow, _ = streamed(pipeline, TurnRequest("Say hello.", adapter="base", conversation_id=first.conversation_id))
    assert follow.conversation_id == first.conversation_id
    assert follow.prompt_tokens > first.prompt_tokens  # the logged history is in the prompt


def test_long_history_is_trimmed_to_the_context_window(chat_parts, pipeline):
    engine = chat_parts.engine
    filler = "The trail was long and the weather was mild. " * 120  # about 1,300 tokens a message
    history = []
    for _ in range(6):
        history += [{"role": "user", "content": filler}, {"role": "assistant", "content": filler}]
    turn = pipeline.prepare(TurnRequest("Summarise our chat.", adapter="base", history=history))
    assert 1 < len(turn.messages) < len(history) + 2
    assert turn.messages[-1]["content"] == "Summarise our chat."
    assert turn.messages[1]["role"] == "user"  # whole exchanges are dropped, oldest first
    assert len(engine.render(turn.messages)) + turn.options.max_new_tokens <= engine.context_window


def test_bad_turns_are_refused_before_generating(chat_parts, pipeline):
    too_long = "word " * (chat_parts.engine.context_window + 100)
    with pytest.raises(InvalidRequestError, match="too long"):
        pipeline.prepare(TurnRequest(too_long, adapter="base"))
    with pytest.raises(InvalidRequestError, match="empty"):
        TurnRequest("   ")
    with pytest.raises(NotFoundError):
        pipeline.prepare(TurnRequest("hello", adapter="no-such-adapter"))
    with pytest.raises(InvalidRequestError, match="temperature"):
        pipeline.prepare(TurnRequest("hello", adapter="base", options={"temperature": -1}))


def test_disabled_adapter_is_not_served(chat_parts, pipeline):
    chat_parts.registry.set_status("legal", "disabled")
    try:
        with pytest.raises(NotFoundError, match="no enabled adapter named 'legal'"):
            pipeline.prepare(TurnRequest("What does Article 6 say?", adapter="legal"))
    finally:
        chat_parts.registry.set_status("legal", "enabled")


def test_cli_chat_json_goes_through_the_pipeline(chat_parts, tmp_path):
    """Beside a process holding the knowledge base (as a server does), the CLI reads it and logs the turn.

    ``--home`` names the data folder over an empty $SWITCHBOARD_HOME, which has no adapter called support.
    """
    done = switchboard(tmp_path, "chat", WARRANTY_QUESTION, "--adapter", "support", "--json", "--max-tokens", "4",
                       "--home", str(chat_parts.settings.home), base_model=chat_parts.settings.base_model)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(done.stdout)
    assert list(data) == [
        "answer", "adapter", "adapter_version", "confidence", "sources", "conversation_id", "message_id", "feedback_token"
    ]
    assert data["feedback_token"] == chat_parts.log.feedback_token(data["message_id"])
    assert data["adapter"] == "support" and data["adapter_version"] == 1
    assert data["sources"] and all({"id", "source", "text", "score"} <= set(s) for s in data["sources"])
    assert chat_parts.log.history(data["conversation_id"], 2)[-1]["content"] == data["answer"]


def test_a_short_follow_up_stays_with_the_conversation_adapter(pipeline):
    first, _ = streamed(pipeline, TurnRequest(WARRANTY_QUESTION))
    follow = pipeline.prepare(TurnRequest("And for tents?", conversation_id=first.conversation_id))
    assert (follow.adapter, follow.route.reason) == ("support", "follow-up")
    assert follow.messages[1:3] == [
        {"role": "user", "content": WARRANTY_QUESTION},
        {"role": "assistant", "content": first.answer},
    ]
