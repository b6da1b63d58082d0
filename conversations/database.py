"""Where the conversation log lives: one SQLite file (the default) or a PostgreSQL database that replicas share.

Library: psycopg 3 (``psycopg[binary]``, which ships libpq) with this small
dialect layer, not SQLAlchemy. The log's SQL is already written once in the
subset both databases speak (``INSERT ... ON CONFLICT``, ``COALESCE``, ``LIMIT``);
what differs is a handful of things this module owns: placeholders (``?`` against
``%s``), how a write transaction starts (SQLite's ``BEGIN IMMEDIATE`` takes the
file's write lock; PostgreSQL writers lock rows as they go), column types chosen
inside the migrations, and locks across processes (an advisory lock against a
file lock). Keeping the SQLite path on the standard library's ``sqlite3`` keeps its
measured behaviour (one writer connection per process, see :mod:`conversations.log`)
exactly as it was; an ORM engine would have replaced it for no gain.

PostgreSQL connections come from a small pool of idle connections, each pinged
(``SELECT 1``) when taken, so connections that died with a server restart are
dropped and replaced and the process recovers on its own. A database that does
not answer raises :class:`core.errors.UnavailableError` (503 with Retry-After at
the API edge), never a driver traceback.
"""

from __future__ import annotations

import fcntl
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol

from core.errors import UnavailableError

BUSY_TIMEOUT_MS = 30_000
CONNECT_TIMEOUT_S = 5
MAX_IDLE = 8
RETRY_AFTER_S = 5.0
Dialect = Literal["sqlite", "postgresql"]
URL_SCHEMES = ("postgresql://", "postgres://")


class Row:
    """A result row read by position or by column name, whichever database it came from (like ``sqlite3.Row``)."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: Sequence[str], values: Sequence[Any]) -> None:
        self._names = names
        self._values = values

    def __getitem__(self, key: int | str) -> Any:
        return self._values[key if isinstance(key, int) else self._names.index(key)]

    def keys(self) -> list[str]:
        return list(self._names)


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection:
    """One connection in the log's SQL: ``?`` placeholders, rows readable by index and by name."""

    def __init__(self, raw: Any, dialect: Dialect) -> None:
        self.raw = raw
        self.dialect: Dialect = dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        if self.dialect == "postgresql":
            sql = sql.replace("?", "%s")
        return self.raw.execute(sql, params)


class Held(Protocol):
    def release(self) -> None: ...


class Database(Protocol):
    """What :class:`conversations.log.ConversationLog` needs from a database."""

    location: str

    def read(self) -> Any:
        """A context manager giving a :class:`Connection` for reads (each statement commits on its own)."""

    def write(self) -> Any:
        """A context manager giving a :class:`Connection` inside one write transaction, committed on exit."""

    def ping(self) -> float: ...

    def try_lock(self, name: str) -> Held | None: ...


def round_trip_ms(database: Database) -> float:
    """Milliseconds for a ``SELECT 1`` on a connection as reads get one (a pooled one is pinged first too)."""
    started = time.perf_counter()
    with database.read() as db:
        db.execute("SELECT 1").fetchone()
    return (time.perf_counter() - started) * 1000


def open_database(where: str | Path) -> Database:
    """A PostgreSQL database for a ``postgresql://`` URL, else the SQLite file at that path."""
    if isinstance(where, str) and where.startswith(URL_SCHEMES):
        return PostgresDatabase(where)
    return SQLiteDatabase(Path(where))


# --- SQLite --------------------------------------------------------------------------------------


class _FileLock:
    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def release(self) -> None:
        self._handle.close()  # closing the file drops its flock


class SQLiteDatabase:
    """One file in WAL mode; this process's writers take turns on one connection."""

    dialect: Dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._writing = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        db = self._open()
        try:
            db.execute("PRAGMA journal_mode=WAL")
        finally:
            db.close()

    def _open(self, shared: bool = False) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=not shared
        )
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection of its own for each read."""
        db = self._open()
        try:
            yield Connection(db, "sqlite")
        finally:
            db.close()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction on this process's write connection; BEGIN IMMEDIATE takes SQLite's write
        lock first, so writers in other processes queue instead of failing."""
        with self._writing:
            if self._writer is None:
                self._writer = self._open(shared=True)
            db = self._writer
            db.execute("BEGIN IMMEDIATE")
            try:
                yield Connection(db, "sqlite")
                db.execute("COMMIT")
            except BaseException:
                self._roll_back(db)
                raise

    def _roll_back(self, db: sqlite3.Connection) -> None:
        """End the failed transaction; a connection that cannot is dropped, and the next write opens a new one."""
        try:
            if db.in_transaction:
                db.execute("ROLLBACK")
        except sqlite3.Error:
            db.close()
            self._writer = None

    def ping(self) -> float:
        return round_trip_ms(self)

    def try_lock(self, name: str) -> Held | None:
        """An exclusive lock on ``<file>.<name>.lock`` next to the log, or None when another holder has it;
        the system drops it when the holding process dies."""
        handle = open(self.path.with_name(f"{self.path.name}.{name}.lock"), "a")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        return _FileLock(handle)


# --- PostgreSQL ----------------------------------------------------------------------------------


def _rows(cursor: Any) -> Any:
    """psycopg row factory making :class:`Row` objects."""
    names = [column.name for column in cursor.description or ()]
    return lambda values: Row(names, values)


class _AdvisoryLock:
    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def release(self) -> None:
        self._connection.close()  # a session's advisory locks end with it


class PostgresDatabase:
    """A PostgreSQL database shared by every replica; connections are pooled and pinged before use."""

    dialect: Dialect = "postgresql"

    def __init__(self, url: str) -> None:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        self._psycopg = psycopg
        self.url = url
        parts = conninfo_to_dict(url)
        self.location = f"{parts.get('host') or 'localhost'}:{parts.get('port') or 5432}"
        self._idle: list[Any] = []
        self._guard = threading.Lock()

    def unavailable(self, exc: BaseException) -> UnavailableError:
        return UnavailableError(
            f"the conversation database at {self.location} does not answer: {' '.join(str(exc).split()) or type(exc).__name__}",
            retry_after=RETRY_AFTER_S,
        )

    def _connect(self) -> Any:
        try:
            return self._psycopg.connect(
                self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, row_factory=_rows
            )
        except self._psycopg.OperationalError as exc:
            raise self.unavailable(exc) from exc

    def _take(self) -> Any:
        """An idle connection that still answers, else a new one."""
        while True:
            with self._guard:
                raw = self._idle.pop() if self._idle else None
            if raw is None:
                return self._connect()
            try:
                raw.execute("SELECT 1")
                return raw
            except self._psycopg.Error:
                raw.close()

    def _give_back(self, raw: Any) -> None:
        idle = not raw.closed and raw.info.transaction_status == self._psycopg.pq.TransactionStatus.IDLE
        with self._guard:
            if idle and len(self._idle) < MAX_IDLE:
                self._idle.append(raw)
                return
        raw.close()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        raw = self._take()
        try:
            yield Connection(raw, "postgresql")
        except (self._psycopg.OperationalError, self._psycopg.InterfaceError) as exc:
            raw.close()
            raise self.unavailable(exc) from exc
        except BaseException:
            self._give_back(raw)
            raise
        self._give_back(raw)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One transaction; rows it writes stay locked until it commits, so concurrent turns of one
        conversation queue on the conversation's row."""
        with self.read() as db:
            db.execute("BEGIN")
            try:
                yield db
            except BaseException:
                if not db.raw.closed and not db.raw.broken:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def ping(self) -> float:
        return round_trip_ms(self)

    def try_lock(self, name: str) -> Held | None:
        """A session advisory lock held by a connection of its own, or None when another session has it;
        PostgreSQL drops it when that connection ends, so a process that dies releases it."""
        raw = self._connect()
        try:
            taken = raw.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (f"switchboard.{name}",)).fetchone()[0]
        except self._psycopg.OperationalError as exc:
            raw.close()
            raise self.unavailable(exc) from exc
        if not taken:
            raw.close()
            return None
        return _AdvisoryLock(raw)
