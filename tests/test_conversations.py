"""The conversation log on real SQLite and real PostgreSQL: turns, ratings, corrections, filters, migrations,
concurrent writers. The behaviours both databases share run on both (the PostgreSQL cases start the session's
throwaway cluster, so they are marked slow); tests/test_log_postgres.py has what only PostgreSQL needs."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from datetime import datetime, timedelta, timezone

import pytest

from conversations.log import ConversationLog
from conversations.migrations import MIGRATIONS
from core.errors import ConfigError, InvalidRequestError, NotFoundError
from core.settings import load_settings

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)]
SOURCES = [{"id": "kb:doc.md:0", "source": "doc.md", "section": "Returns", "text": "30 days.", "score": 0.8}]


def log_one(log: ConversationLog, user: str = "hi", answer: str = "hello", conversation_id=None, **extra):
    values = dict(
        adapter="support", adapter_version=2, confidence=0.7, sources=SOURCES, latency_ms=12.5,
        prompt_tokens=40, completion_tokens=5, system_prompt="Be kind.",
    )
    values.update(extra)
    return log.log_turn(conversation_id, user, answer, **values)


@pytest.fixture(params=BACKENDS)
def where(request, tmp_path) -> str:
    """Where a fresh log lives: a SQLite file, or a new database in the session's PostgreSQL cluster."""
    return str(tmp_path / "c.db") if request.param == "sqlite" else request.getfixturevalue("postgres_db")


def test_a_turn_is_logged_with_everything_needed_to_rebuild_its_prompt(where):
    log = ConversationLog(where)
    first = log_one(log, "How long do returns take?", "30 days [1].")
    second = log_one(log, "And refunds?", "5 days.", conversation_id=first.conversation_id, sources=[])
    assert first.conversation_id == second.conversation_id and first.message_id != second.message_id
    assert log.count_messages() == 4
    assert log.history(first.conversation_id, 10) == [
        {"role": "user", "content": "How long do returns take?"},
        {"role": "assistant", "content": "30 days [1]."},
        {"role": "user", "content": "And refunds?"},
        {"role": "assistant", "content": "5 days."},
    ]
    assert log.history(first.conversation_id, 1) == [{"role": "assistant", "content": "5 days."}]
    assert log.history("conv_unknown", 10) == []
    turns = list(log.turns())
    assert [t.user for t in turns] == ["How long do returns take?", "And refunds?"]
    assert turns[0].sources == SOURCES and turns[0].system_prompt == "Be kind."
    assert (turns[0].adapter, turns[0].adapter_version, turns[0].confidence) == ("support", 2, 0.7)
    assert (turns[0].latency_ms, turns[0].prompt_tokens, turns[0].completion_tokens) == (12.5, 40, 5)
    assert turns[0].history == [] and turns[1].history == turns[0].history + [
        {"role": "user", "content": "How long do returns take?"},
        {"role": "assistant", "content": "30 days [1]."},
    ]


def test_feedback_the_latest_rating_counts_and_a_correction_replaces_the_answer(where):
    log = ConversationLog(where)
    good = log_one(log, "q1", "a1")
    bad = log_one(log, "q2", "wrong")
    unrated = log_one(log, "q3", "a3", adapter=None, adapter_version=None)
    log.add_feedback(good.message_id, "down")
    log.add_feedback(good.message_id, "up", comment="on second thought")
    log.add_feedback(bad.message_id, "down", correction="right")
    assert [t.user for t in log.turns(rating="up")] == ["q1"]
    (corrected,) = log.turns(corrected_only=True)
    assert (corrected.answer, corrected.logged_answer, corrected.corrected, corrected.rating) == ("right", "wrong", True, "down")
    assert [t.user for t in log.turns(adapter="base")] == ["q3"]
    assert [t.user for t in log.turns(adapter="support")] == ["q1", "q2"]
    assert next(log.turns(rating="up")).comment == "on second thought"
    assert unrated.message_id in {t.message_id for t in log.turns()}


def test_bad_feedback_is_refused_and_changes_nothing(tmp_path):
    log = ConversationLog(tmp_path / "c.db")
    ids = log_one(log)
    with pytest.raises(NotFoundError):
        log.add_feedback("msg_nope", "up")
    with pytest.raises(InvalidRequestError):
        log.add_feedback(ids.message_id, "meh")
    with pytest.raises(InvalidRequestError):
        log.add_feedback(ids.message_id, "down", correction="   ")
    user_message = sqlite3.connect(tmp_path / "c.db").execute("SELECT id FROM messages WHERE role='user'").fetchone()[0]
    with pytest.raises(InvalidRequestError):
        log.add_feedback(user_message, "up")
    assert list(log.turns(rating="up")) == [] and list(log.turns(rating="down")) == []


def test_a_refused_write_leaves_the_log_writable(where):
    log = ConversationLog(where)
    ids = log_one(log)
    with pytest.raises(NotFoundError):  # refused inside the write transaction, which is rolled back
        log.add_feedback("msg_nope", "up")
    log.add_feedback(ids.message_id, "up")
    later = log_one(log, "next", "answer", conversation_id=ids.conversation_id)
    assert [t.message_id for t in log.turns(rating="up")] == [ids.message_id]
    assert later.message_id in {t.message_id for t in log.turns()}


def test_date_range_filters(where):
    log = ConversationLog(where)
    log_one(log, "old")
    middle = datetime.now(timezone.utc)
    log_one(log, "new")
    assert [t.user for t in log.turns(since=middle)] == ["new"]
    assert [t.user for t in log.turns(until=middle)] == ["old"]
    assert [t.user for t in log.turns(since=(middle - timedelta(days=1)).date().isoformat())] == ["old", "new"]
    with pytest.raises(InvalidRequestError):
        list(log.turns(since="last tuesday"))


def test_wal_mode_and_migrations_are_recorded_once(tmp_path):
    ConversationLog(tmp_path / "c.db")
    ConversationLog(tmp_path / "c.db")  # reopening applies nothing twice
    db = sqlite3.connect(tmp_path / "c.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [r[0] for r in db.execute("SELECT name FROM _migrations")] == [m.__name__ for m in MIGRATIONS]
    assert MIGRATIONS[0].__name__ == "m001_initial"


def test_many_turns_page_through_in_order(where):
    log = ConversationLog(where)
    for i in range(1203):
        log_one(log, f"q{i}", f"a{i}", sources=[])
    users = [t.user for t in log.turns()]
    assert users == [f"q{i}" for i in range(1203)]


def _write_turns(path: str, worker: int, count: int) -> None:
    log = ConversationLog(path)
    for i in range(count):
        log_one(log, f"w{worker}-{i}", "a", sources=[])


def test_concurrent_writers_in_threads_and_processes_lose_nothing(where):
    log = ConversationLog(where)
    shared = log_one(log, "start", "a")
    threads = [
        threading.Thread(target=lambda w=w: [log_one(log, f"t{w}-{i}", "a", conversation_id=shared.conversation_id) for i in range(40)])
        for w in range(4)
    ]
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_write_turns, args=(where, w, 40)) for w in range(2)]
    for worker in [*threads, *processes]:
        worker.start()
    for worker in [*threads, *processes]:
        worker.join(timeout=120)
    assert all(p.exitcode == 0 for p in processes)
    assert log.count_messages() == 2 * (1 + 4 * 40 + 2 * 40)
    # One conversation written by four threads at once keeps its turns whole and in order.
    history = log.history(shared.conversation_id, 1000)
    assert len(history) == 2 * (1 + 4 * 40)
    assert [m["role"] for m in history] == ["user", "assistant"] * (1 + 4 * 40)


def test_a_named_lock_is_held_once_across_logs_and_ping_answers(where):
    """Two log objects on one database stand for two processes (separate connections, separate file handles)."""
    first, second = ConversationLog(where), ConversationLog(where)
    assert first.ping() > 0
    held = first.try_lock("training")
    assert held is not None
    assert second.try_lock("training") is None
    other = second.try_lock("something-else")
    assert other is not None
    other.release()
    held.release()
    again = second.try_lock("training")
    assert again is not None
    again.release()


def test_database_url_picks_the_log_and_anything_but_postgresql_is_refused(tmp_path):
    url = "postgresql://switchboard@db.internal:5432/switchboard"
    assert load_settings({"home": tmp_path}, environ={"SWITCHBOARD_DATABASE_URL": url}).conversation_log == url
    assert load_settings({"home": tmp_path}, environ={}).conversation_log == tmp_path / "conversations.db"
    with pytest.raises(ConfigError, match="database_url"):
        load_settings({"home": tmp_path}, environ={"SWITCHBOARD_DATABASE_URL": "mysql://db/x"})
