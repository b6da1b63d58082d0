"""Training data: file formats, malformed lines, PII scrubbing, duplicates, split and replay, train-as-we-serve."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from cli import switchboard

from conversations.log import ConversationLog
from core.errors import InvalidRequestError
from knowledge.passage import Passage
from knowledge.prompt import build_messages
from training.dataset import DatasetOptions, LogFilters, build_dataset, turn_to_chat
from training.formats import read_chats
from training.pii import Scrubber

PLANTED = [
    "jane.roe@example.com",
    "wang.fang@163.com",
    "+1 (415) 555-0134",
    "415-555-0199",
    "13812345678",
    "+86 139 8765 4321",
    "010-62345678",
    "4111 1111 1111 1111",
    "11010519491231002X",
    "123-45-6789",
]


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line, ensure_ascii=False) for line in lines) + "\n")
    return path


def test_three_file_formats_become_one_chat_format(tmp_path):
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}]},
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "Q2"}]}, {"role": "assistant", "content": "A2"}]},
            {"instruction": "Translate", "input": "hola", "output": "hello"},
            {"instruction": "Say hi", "output": "hi"},
            {"conversations": [{"from": "human", "value": "Q3"}, {"from": "gpt", "value": "A3"}, {"from": "human", "value": "Q4"}, {"from": "gpt", "value": "A4"}]},
        ],
    )
    chats = [chat for _, chat in read_chats(path, Counter())]
    assert chats[0] == [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}]
    assert chats[1] == [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]
    assert chats[2] == [{"role": "user", "content": "Translate\n\nhola"}, {"role": "assistant", "content": "hello"}]
    assert chats[3][0]["content"] == "Say hi"
    assert [m["role"] for m in chats[4]] == ["user", "assistant", "user", "assistant"]


def test_malformed_lines_are_skipped_and_counted(tmp_path):
    good = {"instruction": "Name a colour.", "output": "Blue."}
    path = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            good,
            "{not json",
            '"just a string"',
            {"text": "unknown format"},
            {"messages": [{"role": "user", "content": "no answer"}]},
            {"messages": [{"role": "wizard", "content": "?"}, {"role": "assistant", "content": "x"}]},
            {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]},
            {"conversations": [{"from": "human", "value": "   "}, {"from": "gpt", "value": "x"}]},
            {"instruction": 3, "output": "x"},
        ],
    )
    (tmp_path / "binary.jsonl").write_bytes(b'{"instruction": "a", "output": "\xff\xfe"}\n')
    dataset = build_dataset(files=[path, tmp_path / "binary.jsonl"], options=DatasetOptions(replay_fraction=0, holdout_fraction=0))
    assert dataset.card.counts["kept"] == 1
    assert dataset.card.dropped == {
        "not JSON": 1,
        "not a JSON object": 1,
        "unknown format (expected messages, conversations or instruction/output)": 1,
        "no assistant answer": 1,
        "unknown role 'wizard'": 1,
        "roles do not alternate user/assistant": 1,
        "empty message": 1,
        "instruction, input and output must be text": 1,
        "not UTF-8": 1,
    }


def test_nothing_usable_is_one_clear_error(tmp_path):
    path = write_jsonl(tmp_path / "junk.jsonl", ["{oops", {"foo": 1}])
    with pytest.raises(InvalidRequestError, match=r"no usable training examples \(1 not JSON, 1 unknown format"):
        build_dataset(files=[path])
    with pytest.raises(InvalidRequestError, match="not found"):
        build_dataset(files=[tmp_path / "missing.jsonl"])
    with pytest.raises(InvalidRequestError, match="no training data"):
        build_dataset()


def test_scrubber_covers_english_and_chinese_formats_and_leaves_other_numbers():
    scrub = Scrubber()
    text = (
        "Mail jane.roe@example.com or call +1 (415) 555-0134. 我的邮箱是wang.fang@163.com，手机13812345678，"
        "座机010-62345678，身份证11010519491231002X。Card 4111 1111 1111 1111, SSN 123-45-6789, NI AB 12 34 56 C. "
        "Order 20240506 costs 1999 yuan; tracking 1234567890123; call (020) 7946 0958."
    )
    clean = scrub(text)
    for value in ["jane.roe", "wang.fang", "555-0134", "13812345678", "62345678", "1002X", "4111", "123-45-6789", "AB 12"]:
        assert value not in clean, value
    assert "Order 20240506 costs 1999 yuan; tracking 1234567890123" in clean  # not personal data
    assert scrub.counts == {"email": 2, "phone": 4, "national_id": 3, "card": 1}
    assert Scrubber()("4111 1111 1111 1112 fails the Luhn check") == "4111 1111 1111 1112 fails the Luhn check"


def _log_with_pii(path: Path) -> ConversationLog:
    log = ConversationLog(path)
    for i, value in enumerate(PLANTED):
        ids = log.log_turn(
            None, f"My contact is {value}, question {i}: what is {i} plus {i}?", f"{i} plus {i} is {2 * i}. I noted {value}.",
            adapter=None, adapter_version=None, confidence=None, sources=[], latency_ms=1, prompt_tokens=1, completion_tokens=1,
        )
        log.add_feedback(ids.message_id, "up")
    return log


def test_planted_personal_data_never_reaches_the_dataset(tmp_path):
    log = _log_with_pii(tmp_path / "c.db")
    dataset = build_dataset(log=log, filters=LogFilters(adapter="base"), options=DatasetOptions(holdout_fraction=0.2))
    dataset.write(tmp_path / "ds")
    written = "".join((tmp_path / "ds" / name).read_text() for name in ("train.jsonl", "held_out.jsonl", "card.json"))
    written += " ".join(dataset.questions)
    for value in PLANTED:
        assert value not in written and value.replace(" ", "") not in written, value
    assert "[EMAIL]" in written and "[PHONE]" in written and "[CARD]" in written and "[ID]" in written
    assert dataset.card.scrubbed == {"email": 4, "phone": 10, "card": 2, "national_id": 4}


def test_exact_and_near_duplicates_are_removed(tmp_path):
    pair = {"instruction": "How do I reset my password?", "output": "Open Settings, choose Account, then Reset password."}
    spelling = {"instruction": "How do I reset my password ?", "output": "Open settings, choose account, then reset password!"}
    near = {"instruction": "How do I reset my password?", "output": "Open Settings, choose Account, then press Reset password."}
    other = {"instruction": "我怎样修改密码？", "output": "打开设置，选择账户，然后点击修改密码。"}
    near_zh = {"instruction": "我怎样修改密码?", "output": "打开设置，选择账户，再点击修改密码！"}
    different = {"instruction": "How do I change my e-mail address?", "output": "Open Settings, choose Account, then Change e-mail."}
    path = write_jsonl(tmp_path / "dups.jsonl", [pair, pair, spelling, near, other, near_zh, different])
    dataset = build_dataset(files=[path], options=DatasetOptions(replay_fraction=0, holdout_fraction=0))
    assert dataset.card.counts["kept"] == 3
    assert dataset.card.dropped == {"exact duplicate": 2, "near duplicate": 2}


def test_split_replay_and_card(tmp_path):
    rows = [{"instruction": f"Question number {i}: what is {i} squared?", "output": f"{i} squared is {i * i}."} for i in range(40)]
    path = write_jsonl(tmp_path / "sq.jsonl", rows)
    options = DatasetOptions(holdout_fraction=0.2, replay_fraction=0.1, seed=7, system_prompt="You are a maths tutor.")
    dataset = build_dataset(files=[path], options=options)
    counts = dataset.card.counts
    assert (counts["read"], counts["kept"], counts["held_out"], counts["train"]) == (40, 40, 8, 32)
    assert counts["replay"] == 4 and len(dataset.train) == 36  # 4 / 36 ≈ 10% of the training mix
    assert all(chat[0] == {"role": "system", "content": "You are a maths tutor."} for chat in dataset.train + dataset.held_out)
    held = {json.dumps(c) for c in dataset.held_out}
    assert not held & {json.dumps(c) for c in dataset.train}
    again = build_dataset(files=[path], options=options)
    assert again.card.content_hash == dataset.card.content_hash
    other_seed = build_dataset(files=[path], options=options.model_copy(update={"seed": 8}))
    assert other_seed.card.content_hash != dataset.card.content_hash
    assert dataset.card.sources == [f"file:{path}"] and dataset.card.filters["replay_fraction"] == 0.1


def test_a_logged_turn_trains_on_exactly_the_prompt_that_was_served(tmp_path):
    log = ConversationLog(tmp_path / "c.db")
    passages = [
        Passage(id="support:warranty.md:0", source="warranty.md", text="Backpacks have a 3-year warranty.", score=0.9, section="Bags"),
        Passage(id="support:returns.md:2", source="returns.md", text="Returns within 30 days.", score=0.5),
    ]
    first = log.log_turn(None, "Hello", "Hi! How can I help?", adapter="support", adapter_version=1, confidence=0.8,
                         sources=[], latency_ms=1, prompt_tokens=1, completion_tokens=1, system_prompt="You are Acme support.")
    served = build_messages("What is the warranty on backpacks?", passages, "You are Acme support.", log.history(first.conversation_id, 20))
    # The pipeline logs the system message as served (grounding rules included) and its sources as dicts.
    sources = [{"number": n, **p.to_dict()} for n, p in enumerate(passages, start=1)]
    ids = log.log_turn(first.conversation_id, "What is the warranty on backpacks?", "3 years [1].", adapter="support",
                       adapter_version=1, confidence=0.8, sources=sources, latency_ms=1, prompt_tokens=1, completion_tokens=1,
                       system_prompt=served[0]["content"])
    log.add_feedback(ids.message_id, "down", correction="Backpacks have a 3-year warranty [1].")
    turn = next(log.turns(corrected_only=True))
    chat = turn_to_chat(turn)
    assert chat[:-1] == served
    assert chat[-1] == {"role": "assistant", "content": "Backpacks have a 3-year warranty [1]."}
    plain = turn_to_chat(turn, include_sources=False)
    assert plain[:-1] == build_messages("What is the warranty on backpacks?", (), "You are Acme support.", turn.history)
    # The rating filter: a corrected turn is taken even though it is rated down, unless corrections are excluded.
    assert build_dataset(log=log, filters=LogFilters(adapter="support"), options=DatasetOptions(holdout_fraction=0, replay_fraction=0)).card.counts["kept"] == 1
    with pytest.raises(InvalidRequestError, match="2 rating is not up"):
        build_dataset(log=log, filters=LogFilters(adapter="support", include_corrections=False, rating="up"))


def test_logs_export_prints_chat_jsonl_scrubbed(tmp_path):
    home = tmp_path / "home"
    log = _log_with_pii(home / "conversations.db")
    log.log_turn(None, "unrated", "x", adapter="other", adapter_version=1, confidence=0.5, sources=[], latency_ms=1,
                 prompt_tokens=1, completion_tokens=1)
    run = lambda *args: switchboard(home, "logs", "export", *args, timeout=120)
    out = run("--json", "--rating", "up")
    assert out.returncode == 0, out.stderr
    records = json.loads(out.stdout)
    assert len(records) == len(PLANTED) and all(r["metadata"]["rating"] == "up" for r in records)
    assert records[0]["messages"][-1]["role"] == "assistant" and "[EMAIL]" in records[0]["messages"][-1]["content"]
    lines = run("--adapter", "other").stdout.splitlines()
    assert [json.loads(line)["metadata"]["adapter"] for line in lines] == ["other"]
    bad = run("--rating", "great")
    assert bad.returncode != 0 and bad.stderr.strip().startswith("error:") and "Traceback" not in bad.stderr


def test_an_option_value_out_of_range_is_one_usage_error_not_a_traceback(tmp_path):
    data = tmp_path / "chats.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}) + "\n")
    bad = switchboard(tmp_path / "home", "train", "--adapter", "x", "--data", str(data), "--max-steps", "0", timeout=120)
    assert bad.returncode == 2 and "--max-steps" in bad.stderr and "greater than or equal to 1" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "home" / "runs").exists()  # refused before any work
