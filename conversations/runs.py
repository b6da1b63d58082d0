"""Training runs as every process sharing the log sees them.

A run trains in the process that started it, which writes each status change
here too, so another replica can show the run in its Training tab and answer
``GET /admin/train/{run_id}`` for it. The lock that keeps to one run at a time
across replicas is the database's (:meth:`conversations.database.Database.lock`).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from conversations.database import Database

ACTIVE_STATES = ("queued", "running")


class RunRecords:
    def __init__(self, database: Database) -> None:
        self.database = database

    def save(self, status: dict[str, Any]) -> None:
        """Record a run's whole status (its ``run_id``, ``adapter`` and ``state`` among it)."""
        now = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        with self.database.write() as db:
            db.execute(
                "INSERT INTO training_runs (id, adapter, state, status, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET state = excluded.state, status = excluded.status, "
                "updated_at = excluded.updated_at",
                (status["run_id"], status["adapter"], status["state"], json.dumps(status, default=str), now),
            )

    def get(self, run_id: str) -> dict[str, Any] | None:
        with self.database.read() as db:
            row = db.execute("SELECT status FROM training_runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else json.loads(row["status"])

    def active(self) -> list[dict[str, Any]]:
        """Runs recorded as queued or running, newest first (one whose process died stays so until marked)."""
        with self.database.read() as db:
            rows = db.execute(
                "SELECT status FROM training_runs WHERE state IN (?, ?) ORDER BY updated_at DESC", ACTIVE_STATES
            ).fetchall()
        return [json.loads(row["status"]) for row in rows]
