"""The conversation log's schema, as named migrations applied once each and recorded in ``_migrations``.

The schema only grows: append a new migration, never edit one that has been
applied, since databases in the field already ran it (the approach of
simonw/llm's migrations).
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable
from datetime import datetime, timezone

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    """Register ``fn`` as the next migration; its name is what ``_migrations`` records."""
    MIGRATIONS.append(fn)
    return fn


def migrate(db: sqlite3.Connection) -> list[str]:
    """Apply the migrations this database has not seen, in order, each recorded in ``_migrations``.

    The check and the changes share one write transaction, so two processes
    opening a new log at once cannot both apply a migration.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
        done = {row[0] for row in db.execute("SELECT name FROM _migrations")}
        applied = []
        for fn in MIGRATIONS:
            if fn.__name__ in done:
                continue
            fn(db)
            applied_at = datetime.now(timezone.utc).isoformat(timespec="microseconds")
            db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (fn.__name__, applied_at))
            applied.append(fn.__name__)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return applied


@migration
def m001_initial(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE conversations (id TEXT PRIMARY KEY, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)"
    )
    db.execute(
        """CREATE TABLE messages (
            id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL REFERENCES conversations(id),
            seq INTEGER NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
            content TEXT NOT NULL,
            reply_to TEXT REFERENCES messages(id),
            system_prompt TEXT,
            adapter TEXT,
            adapter_version INTEGER,
            confidence REAL,
            sources TEXT,
            latency_ms REAL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            created_at TEXT NOT NULL,
            UNIQUE (conversation_id, seq)
        )"""
    )
    db.execute("CREATE INDEX messages_adapter ON messages (adapter, created_at)")
    db.execute(
        """CREATE TABLE feedback (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            message_id TEXT NOT NULL REFERENCES messages(id),
            rating TEXT NOT NULL CHECK (rating IN ('up', 'down')),
            comment TEXT,
            correction TEXT,
            created_at TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX feedback_message ON feedback (message_id, id)")


@migration
def m002_route_and_checks(db: sqlite3.Connection) -> None:
    """Each answer keeps its routing decision (with the retrieval signal) and how it fared against its sources."""
    db.execute("ALTER TABLE messages ADD COLUMN route TEXT")
    db.execute("ALTER TABLE messages ADD COLUMN checks TEXT")


@migration
def m003_feedback_trust(db: sqlite3.Connection) -> None:
    """Feedback carries whether it is trusted (feedback from before this migration is), and the key of the
    feedback tokens lives with the log, so every process that shares the log hands out the same tokens."""
    db.execute("ALTER TABLE feedback ADD COLUMN trusted INTEGER NOT NULL DEFAULT 1")
    db.execute("ALTER TABLE feedback ADD COLUMN accepted_at TEXT")
    db.execute("CREATE TABLE secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO secrets (name, value) VALUES ('feedback', ?)", (secrets.token_hex(32),))
