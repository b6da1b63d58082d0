"""The conversation log on real SQLite and a real PostgreSQL server: turns, ratings, corrections, filters,
migrations, concurrent writers; and a PostgreSQL that stops and starts again."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from conversations.log import ConversationLog
from conversations.migrations import MIGRATIONS
from core.errors import InvalidRequestError, LockedError, NotFoundError, UnavailableError

SOURCES = [{"id": "kb:doc.md:0", "source": "doc.md", "section": "Returns", "text": "30 days.", "score": 0.8}]


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path) -> str:
    """Where a fresh log lives: a SQLite file, or a new database on the suite's PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "c.db")
    return request.getfixturevalue("postgres").new_database()


def log_one(log: ConversationLog, user: str = "hi", answer: str = "hello", conversation_id=None, **extra):
    values = dict(
        adapter="support", adapter_version=2, confidence=0.7, sources=SOURCES, latency_ms=12.5,
        prompt_tokens=40, completion_tokens=5, system_prompt="Be kind.",
    )
    values.update(extra)
    return log.log_turn(conversation_id, user, answer, **values)


def test_a_turn_is_logged_with_everything_needed_to_rebuild_its_prompt(location):
    log = ConversationLog(location)
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


def test_feedback_the_latest_rating_counts_and_a_correction_replaces_the_answer(location):
    log = ConversationLog(location)
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


def test_bad_feedback_is_refused_and_changes_nothing(location):
    log = ConversationLog(location)
    ids = log_one(log)
    with pytest.raises(NotFoundError):
        log.add_feedback("msg_nope", "up")
    with pytest.raises(InvalidRequestError):
        log.add_feedback(ids.message_id, "meh")
    with pytest.raises(InvalidRequestError):
        log.add_feedback(ids.message_id, "down", correction="   ")
    with log.database.read() as db:
        user_message = db.execute("SELECT id FROM messages WHERE role = 'user'").fetchone()["id"]
    with pytest.raises(InvalidRequestError):
        log.add_feedback(user_message, "up")
    assert list(log.turns(rating="up")) == [] and list(log.turns(rating="down")) == []


def test_a_refused_write_leaves_the_log_writable(location):
    log = ConversationLog(location)
    ids = log_one(log)
    with pytest.raises(NotFoundError):  # refused inside the write transaction, which is rolled back
        log.add_feedback("msg_nope", "up")
    log.add_feedback(ids.message_id, "up")
    later = log_one(log, "next", "answer", conversation_id=ids.conversation_id)
    assert [t.message_id for t in log.turns(rating="up")] == [ids.message_id]
    assert later.message_id in {t.message_id for t in log.turns()}


def test_date_range_filters(location):
    log = ConversationLog(location)
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


def test_many_turns_page_through_in_order(location):
    log = ConversationLog(location)
    for i in range(1203):
        log_one(log, f"q{i}", f"a{i}", sources=[])
    users = [t.user for t in log.turns()]
    assert users == [f"q{i}" for i in range(1203)]


def _write_turns(path: str, worker: int, count: int) -> None:
    log = ConversationLog(path)
    for i in range(count):
        log_one(log, f"w{worker}-{i}", "a", sources=[])


def test_concurrent_writers_in_threads_and_processes_lose_nothing(location):
    path = location
    log = ConversationLog(path)
    shared = log_one(log, "start", "a")
    threads = [
        threading.Thread(target=lambda w=w: [log_one(log, f"t{w}-{i}", "a", conversation_id=shared.conversation_id) for i in range(40)])
        for w in range(4)
    ]
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_write_turns, args=(path, w, 40)) for w in range(2)]
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


def _open_together(url: str, together) -> None:
    together.wait(timeout=60)  # every interpreter has started and imported: they open the log at one moment
    ConversationLog(url)


def test_migrations_on_postgresql_are_applied_once_by_processes_that_open_a_new_log_at_once(postgres):
    url = postgres.new_database()
    context = multiprocessing.get_context("spawn")
    together = context.Barrier(3)
    openers = [context.Process(target=_open_together, args=(url, together)) for _ in range(3)]
    for opener in openers:
        opener.start()
    for opener in openers:
        opener.join(timeout=120)
    assert all(p.exitcode == 0 for p in openers)
    log = ConversationLog(url)
    with log.database.read() as db:
        names = [row["name"] for row in db.execute("SELECT name FROM _migrations ORDER BY applied_at").fetchall()]
    assert names == [m.__name__ for m in MIGRATIONS]


def test_a_postgresql_that_stops_gives_unavailable_then_the_same_log_recovers(postgres):
    log = ConversationLog(postgres.new_database())
    first = log_one(log)
    postgres.stop()
    postgres.start()
    log.ping()  # a restart between two calls goes unnoticed: the pool replaces the connection it broke
    postgres.stop()
    try:
        waits = []
        for call in (log.ping, lambda: log_one(log), lambda: log.add_feedback(first.message_id, "up"), log.count_messages):
            started = time.perf_counter()
            with pytest.raises(UnavailableError, match="conversation database at 127.0.0.1:") as refused:
                call()
            waits.append(time.perf_counter() - started)
            assert refused.value.status_code == 503 and refused.value.retry_after > 0
        # The first call finds the pool's connection gone and waits out the pool; the next ones are refused at once.
        assert max(waits[1:]) < 1.0, waits
    finally:
        postgres.start()
    log.ping()
    log.add_feedback(first.message_id, "up")
    second = log_one(log, conversation_id=first.conversation_id)
    assert [t.message_id for t in log.turns()] == [first.message_id, second.message_id]
    assert log.count_messages() == 4  # nothing half-written while it was down


def test_a_lock_in_the_database_is_held_by_one_process_and_freed_when_it_dies(location):
    log = ConversationLog(location)
    other = ConversationLog(location)
    with log.database.lock("training"):
        with pytest.raises(LockedError, match="training is held by another process"):
            with other.database.lock("training"):
                pass
    with other.database.lock("training"):  # released at the end of the block
        pass
    context = multiprocessing.get_context("spawn")
    holder = context.Process(target=_hold_lock_forever, args=(location,))
    holder.start()
    try:
        deadline = time.monotonic() + 60
        while True:  # wait until the child holds it
            try:
                with other.database.lock("training"):
                    pass
            except LockedError:
                break
            assert time.monotonic() < deadline and holder.is_alive()
            time.sleep(0.1)
    finally:
        holder.kill()
        holder.join(timeout=30)
    deadline = time.monotonic() + 30
    while True:  # a dead holder's lock is free again
        try:
            with other.database.lock("training"):
                break
        except LockedError:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def _hold_lock_forever(location: str) -> None:
    with ConversationLog(location).database.lock("training"):
        time.sleep(600)
