"""The conversation log: every chat turn and every rating, in SQLite or on a PostgreSQL server.

The log is the raw material of new adapters, so it must lose nothing: each
turn (the user's message and the answer) is written in one transaction, on
either database (:mod:`conversations.database`), so a process killed mid-turn
leaves no half turn, and processes sharing the log (replicas behind a load
balancer, on PostgreSQL) see each other's turns and ratings. The schema only
grows through the named migrations of :mod:`conversations.migrations`, each
recorded in ``_migrations`` once applied.

Each assistant message keeps what is needed to rebuild the exact prompt it
was served with (system prompt, sources, earlier messages), so training can
train as we serve.
"""

from __future__ import annotations

import hmac
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Literal

from conversations.database import Connection, Database, open_database
from conversations.migrations import migrate
from core.errors import InvalidRequestError, NotFoundError

MAX_ID_CHARS = 128
PAGE = 500
Rating = Literal["up", "down"]


@dataclass(frozen=True)
class TurnIds:
    conversation_id: str
    message_id: str


@dataclass(frozen=True)
class Turn:
    """One logged exchange as training reads it: the question, the answer to learn, and how it was served."""

    message_id: str = field(metadata={"help": "Id of the assistant message (the one ratings refer to)."})
    conversation_id: str
    user: str = field(metadata={"help": "The user's message, without sources."})
    answer: str = field(metadata={"help": "The operator's correction when there is one, else the logged answer."})
    logged_answer: str = field(metadata={"help": "What the model answered."})
    corrected: bool
    rating: Rating | None = field(metadata={"help": "The latest rating of the answer, if any."})
    comment: str | None
    system_prompt: str | None = field(metadata={"help": "The system message exactly as served."})
    sources: list[dict] = field(metadata={"help": "Retrieved passages shown with the question, in order."})
    history: list[dict] = field(metadata={"help": "Earlier {role, content} messages of the conversation."})
    adapter: str | None
    adapter_version: int | None
    confidence: float | None
    latency_ms: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    created_at: str
    checks: dict | None = field(
        default=None,
        metadata={"help": "How the answer fared against its sources (action, problems, the generated text); "
                  "None for turns logged before the checks existed."},
    )

    @property
    def failed_checks(self) -> bool:
        """Whether the model's answer stated what its sources lack (shown repaired or replaced): no positive example."""
        return bool(self.checks) and (self.checks.get("grounded") is False or self.checks.get("action") == "replaced")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _timestamp(value: str | date | datetime | None) -> str | None:
    """Dates and times as the log stores them (ISO 8601, UTC), so ranges compare as strings."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise InvalidRequestError(f"not an ISO date or time: {value!r}") from exc
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _json_or_null(value: dict | None) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _check_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_ID_CHARS:
        raise InvalidRequestError(f"invalid {what}: use 1-{MAX_ID_CHARS} characters")
    return value


class ConversationLog:
    """The log in one database; safe to share between threads and processes."""

    def __init__(self, location: Path | str) -> None:
        """``location``: a SQLite file's path, or a ``postgresql://`` URL (the ``database_url`` setting)."""
        self.database: Database = open_database(location)
        migrate(self.database)

    def ping(self) -> None:
        """Raise UnavailableError when the database does not answer (``/health``)."""
        self.database.ping()

    # --- writing ---

    def log_turn(
        self,
        conversation_id: str | None,
        user: str,
        answer: str,
        *,
        adapter: str | None,
        adapter_version: int | None,
        confidence: float | None,
        sources: list[dict],
        latency_ms: float,
        prompt_tokens: int,
        completion_tokens: int,
        system_prompt: str | None = None,
        route: dict | None = None,
        checks: dict | None = None,
    ) -> TurnIds:
        """Log the user's message and the answer together; a None conversation id starts a new conversation.

        ``route`` is the routing decision with its retrieval signal and
        ``checks`` the grounding report, each stored as JSON.
        """
        conversation_id = _new_id("conv") if conversation_id is None else _check_id(conversation_id, "conversation id")
        user_id, answer_id = _new_id("msg"), _new_id("msg")
        now = _now()
        sources_json = json.dumps(list(sources or []), ensure_ascii=False)
        with self.database.write() as db:
            db.execute(
                "INSERT INTO conversations (id, created_at, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET updated_at = excluded.updated_at",
                (conversation_id, now, now),
            )
            # On PostgreSQL the upsert above locks the conversation's row until commit: turns of one
            # conversation logged at once take their numbers one after the other.
            seq = db.execute(
                "SELECT COALESCE(MAX(seq), 0) AS top FROM messages WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()["top"]
            db.execute(
                "INSERT INTO messages (id, conversation_id, seq, role, content, created_at) VALUES (?, ?, ?, 'user', ?, ?)",
                (user_id, conversation_id, seq + 1, user, now),
            )
            db.execute(
                "INSERT INTO messages (id, conversation_id, seq, role, content, reply_to, system_prompt, adapter,"
                " adapter_version, confidence, sources, latency_ms, prompt_tokens, completion_tokens, created_at,"
                " route, checks) VALUES (?, ?, ?, 'assistant', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    answer_id, conversation_id, seq + 2, answer, user_id, system_prompt, adapter, adapter_version,
                    confidence, sources_json, latency_ms, prompt_tokens, completion_tokens, now,
                    _json_or_null(route), _json_or_null(checks),
                ),
            )
        return TurnIds(conversation_id, answer_id)

    def add_feedback(
        self,
        message_id: str,
        rating: Rating,
        comment: str | None = None,
        correction: str | None = None,
        *,
        trusted: bool = True,
    ) -> None:
        """Rate an answer; a correction is the answer it should have been, and replaces it in training data.

        Untrusted feedback (sent over HTTP without the answer's feedback token)
        is kept, but training and exports ignore it until an operator accepts it.
        """
        if rating not in ("up", "down"):
            raise InvalidRequestError(f"rating must be 'up' or 'down', not {rating!r}")
        if correction is not None and not correction.strip():
            raise InvalidRequestError("the correction is empty")
        with self.database.write() as db:
            row = db.execute("SELECT role FROM messages WHERE id = ?", (message_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no message {message_id!r}")
            if row["role"] != "assistant":
                raise InvalidRequestError("only answers can be rated")
            db.execute(
                "INSERT INTO feedback (message_id, rating, comment, correction, created_at, trusted)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (message_id, rating, comment, correction, _now(), int(trusted)),
            )

    # --- feedback trust: whoever received an answer may rate it; anyone else waits for an operator ---

    @cached_property
    def _feedback_key(self) -> bytes:
        with self.database.read() as db:
            return bytes.fromhex(db.execute("SELECT value FROM secrets WHERE name = 'feedback'").fetchone()["value"])

    def feedback_token(self, message_id: str) -> str:
        """The secret handed out with an answer that makes feedback on it trusted (an HMAC of its id)."""
        return hmac.new(self._feedback_key, message_id.encode("utf-8"), "sha256").hexdigest()[:32]

    def check_feedback_token(self, message_id: str, token: str) -> bool:
        return hmac.compare_digest(self.feedback_token(message_id).encode(), token.encode("utf-8", "replace"))

    def untrusted_feedback(self) -> list[dict]:
        """Feedback waiting for an operator, oldest first, with the answer it is about."""
        with self.database.read() as db:
            rows = db.execute(
                "SELECT f.message_id, f.rating, f.comment, f.correction, f.created_at, m.content AS answer "
                "FROM feedback f JOIN messages m ON m.id = f.message_id WHERE f.trusted = 0 ORDER BY f.id"
            ).fetchall()
        return [dict(row) for row in rows]

    def accept_feedback(self, message_id: str) -> int:
        """Trust the untrusted feedback on one answer (an operator read it); returns how many entries."""
        with self.database.write() as db:
            accepted = db.execute(
                "UPDATE feedback SET trusted = 1, accepted_at = ? WHERE message_id = ? AND trusted = 0",
                (_now(), message_id),
            ).rowcount
        if not accepted:
            raise NotFoundError(f"no untrusted feedback on message {message_id!r}")
        return accepted

    # --- reading ---

    def history(self, conversation_id: str, limit: int = 20) -> list[dict]:
        """The last ``limit`` messages of a conversation, oldest first; none for an unknown conversation."""
        with self.database.read() as db:
            rows = db.execute(
                "SELECT role, content FROM messages WHERE conversation_id = ? ORDER BY seq DESC LIMIT ?",
                (conversation_id, max(0, int(limit))),
            ).fetchall()
        return [{"role": r["role"], "content": r["content"]} for r in reversed(rows)]

    def count_messages(self) -> int:
        with self.database.read() as db:
            return int(db.execute("SELECT COUNT(*) AS n FROM messages").fetchone()["n"])

    def turns(
        self,
        adapter: str | None = None,
        rating: Rating | None = None,
        since: str | date | datetime | None = None,
        until: str | date | datetime | None = None,
        corrected_only: bool = False,
        history_limit: int = 20,
    ) -> Iterator[Turn]:
        """Logged turns, oldest first. ``adapter="base"`` selects turns answered without an adapter;
        ``rating`` matches the latest rating; ``until`` is exclusive."""
        where, params = ["a.role = 'assistant'"], []
        if adapter == "base":
            where.append("a.adapter IS NULL")
        elif adapter is not None:
            where.append("a.adapter = ?")
            params.append(adapter)
        if rating is not None:
            where.append("f.rating = ?")
            params.append(rating)
        if since is not None:
            where.append("a.created_at >= ?")
            params.append(_timestamp(since))
        if until is not None:
            where.append("a.created_at < ?")
            params.append(_timestamp(until))
        if corrected_only:
            where.append("c.correction IS NOT NULL")
        query = (
            "SELECT a.rowid AS position, a.*, u.content AS user_content, f.rating, f.comment, c.correction "
            "FROM messages a JOIN messages u ON u.id = a.reply_to "
            "LEFT JOIN feedback f ON f.id = (SELECT MAX(id) FROM feedback WHERE message_id = a.id AND trusted = 1) "
            "LEFT JOIN feedback c ON c.id = "
            "(SELECT MAX(id) FROM feedback WHERE message_id = a.id AND trusted = 1 AND correction IS NOT NULL) "
            f"WHERE {' AND '.join(where)} AND a.rowid > ? ORDER BY a.rowid LIMIT {PAGE}"
        )
        last = 0
        while True:
            with self.database.read() as db:
                rows = db.execute(query, (*params, last)).fetchall()
                page = [self._turn(db, row, history_limit) for row in rows]
            yield from page
            if len(rows) < PAGE:
                return
            last = rows[-1]["position"]

    def _turn(self, db: Connection, row, history_limit: int) -> Turn:
        user_seq = row["seq"] - 1
        earlier = db.execute(
            "SELECT role, content FROM messages WHERE conversation_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
            (row["conversation_id"], user_seq, max(0, history_limit)),
        ).fetchall()
        correction = row["correction"]
        return Turn(
            message_id=row["id"],
            conversation_id=row["conversation_id"],
            user=row["user_content"],
            answer=correction if correction is not None else row["content"],
            logged_answer=row["content"],
            corrected=correction is not None,
            rating=row["rating"],
            comment=row["comment"],
            system_prompt=row["system_prompt"],
            sources=json.loads(row["sources"] or "[]"),
            history=[{"role": r["role"], "content": r["content"]} for r in reversed(earlier)],
            adapter=row["adapter"],
            adapter_version=row["adapter_version"],
            confidence=row["confidence"],
            latency_ms=row["latency_ms"],
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
            created_at=row["created_at"],
            checks=json.loads(row["checks"]) if row["checks"] else None,
        )
