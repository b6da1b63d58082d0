"""The conversation log on a real PostgreSQL 15 shared by several processes, as replicas share it.

What only a shared database needs: a turn written by one process rated
through another, migrations applied once when processes open a new database
at once, an outage that turns into UnavailableError and heals without a
restart, and one training run at a time across processes. The behaviours
both databases share are tested on both in tests/test_conversations.py.
"""

from __future__ import annotations

import json
import multiprocessing

import psycopg
import pytest
from conftest import style_chats
from postgres import pg_start, pg_stop
from test_conversations import log_one

from bot.parts import Parts
from conversations.log import ConversationLog
from conversations.migrations import MIGRATIONS
from core.errors import LockedError, UnavailableError

pytestmark = pytest.mark.slow  # starts a PostgreSQL cluster and processes

SPAWN = multiprocessing.get_context("spawn")


def _rate(url: str, message_id: str, token: str, answers) -> None:
    """In another process: check the feedback token, then correct the answer written by the first process."""
    log = ConversationLog(url)
    answers.put(log.check_feedback_token(message_id, token))
    log.add_feedback(message_id, "down", correction="Thirty days, counted from delivery.")


def test_feedback_from_another_process_lands_on_the_same_turn(postgres_db):
    log = ConversationLog(postgres_db)
    ids = log_one(log, "How long do returns take?", "A week.")
    answers = SPAWN.Queue()
    rater = SPAWN.Process(target=_rate, args=(postgres_db, ids.message_id, log.feedback_token(ids.message_id), answers))
    rater.start()
    rater.join(timeout=120)
    assert rater.exitcode == 0 and answers.get(timeout=5) is True  # both processes hand out the same tokens
    (turn,) = log.turns(corrected_only=True)
    assert (turn.message_id, turn.answer, turn.logged_answer, turn.rating) == (
        ids.message_id, "Thirty days, counted from delivery.", "A week.", "down",
    )
    assert log.count_messages() == 2


def _open(url: str, together) -> None:
    together.wait(timeout=60)  # every interpreter has started: they open the log at the same moment
    ConversationLog(url)


def test_processes_opening_a_new_database_at_once_apply_each_migration_once(postgres_db):
    together = SPAWN.Barrier(4)
    openers = [SPAWN.Process(target=_open, args=(postgres_db, together)) for _ in range(4)]
    for opener in openers:
        opener.start()
    for opener in openers:
        opener.join(timeout=120)
    assert [opener.exitcode for opener in openers] == [0, 0, 0, 0]
    with psycopg.connect(postgres_db) as db:
        names = [row[0] for row in db.execute("SELECT name FROM _migrations ORDER BY applied_at")]
        keys = db.execute("SELECT COUNT(*) FROM secrets").fetchone()[0]
    assert names == [m.__name__ for m in MIGRATIONS]
    assert keys == 1  # m003 ran once: one feedback key for every process


def test_an_outage_raises_unavailable_and_the_same_log_recovers(postgres_db):
    log = ConversationLog(postgres_db)
    before = log_one(log, "before", "a")
    pg_stop()
    pg_start()
    assert log.ping() > 0  # a restart between two calls goes unnoticed: the pooled connection it broke is replaced
    pg_stop()
    try:
        with pytest.raises(UnavailableError, match=r"the conversation database at 127\.0\.0\.1:\d+ does not answer"):
            log.ping()
        with pytest.raises(UnavailableError):
            log_one(log, "during", "b")
        with pytest.raises(UnavailableError):
            log.add_feedback(before.message_id, "up")
        with pytest.raises(UnavailableError):
            list(log.turns())
        with pytest.raises(UnavailableError) as raised:
            log.count_messages()
        assert raised.value.status_code == 503 and raised.value.retry_after > 0
    finally:
        pg_start()
    assert log.ping() > 0
    after = log_one(log, "after", "c", conversation_id=before.conversation_id)
    log.add_feedback(after.message_id, "up")
    assert [t.user for t in log.turns()] == ["before", "after"]  # nothing half-written while it was down
    assert log.count_messages() == 4
    assert [t.message_id for t in log.turns(rating="up")] == [after.message_id]


def test_one_training_run_at_a_time_across_processes_sharing_the_database(make_settings, postgres_db, tmp_path):
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": chat}) + "\n" for chat in style_chats()), encoding="utf-8")
    first = Parts(make_settings(tmp_path / "replica-1", database_url=postgres_db))
    second = Parts(make_settings(tmp_path / "replica-2", database_url=postgres_db))
    request = {"adapter": "signoff", "data": [str(data)], "max_steps": 1, "rank": 4, "gradient_checkpointing": False}
    run_id = first.training_runs.start(request)
    try:
        with pytest.raises(LockedError, match="in progress elsewhere"):
            second.training_runs.start(request)
    finally:
        first.training_runs.cancel(run_id)
    ended = first.training_runs.wait(run_id, timeout=600)
    assert ended["state"] in ("cancelled", "succeeded", "rejected"), ended["error"]
    seen = second.training_runs.status(run_id)  # the other replica has no run folder: the database has the status
    assert not (second.settings.runs_dir / run_id).exists()
    assert (seen["run_id"], seen["state"], seen["finished_at"]) == (run_id, ended["state"], ended["finished_at"])
    held = second.log.try_lock("training")  # the ended run released the lock
    assert held is not None
    held.release()
