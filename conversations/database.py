"""Where the log lives: a SQLite file (the default) or a PostgreSQL server that every replica shares.

The log's SQL is written once, with ``?`` placeholders, in the subset both
databases speak; rows are read by column name. This module opens connections,
runs one transaction per write, takes locks that hold across processes, and
turns a database that does not answer into :class:`core.errors.UnavailableError`
(a 503 with Retry-After at the edges), so a replica whose database went away
refuses clearly and recovers by itself once it is back.

PostgreSQL goes through psycopg 3 and its connection pool: the log's dozen
statements need no query builder, psycopg is the driver SQLAlchemy would use
underneath anyway, and its pool checks each connection before lending it, so a
restarted server costs the requests made while it was down and nothing after.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from filelock import FileLock, Timeout

from core.errors import ConfigError, LockedError, UnavailableError

BUSY_TIMEOUT_MS = 30_000
CONNECT_TIMEOUT_S = 3  # a database that does not answer in this time is down: the turn gets a 503, not a hang
POOL_SIZE = 16
POSTGRES_SCHEMES = ("postgresql", "postgres")
RETRY_AFTER_S = 5.0


class Connection(Protocol):
    """What the log and the migrations use of a connection: ``execute`` with ``?`` placeholders (the SQL holds
    no literal ``?`` or ``%``), returning a cursor whose rows are read by column name."""

    dialect: str

    def execute(self, sql: str, params: tuple | list = ()) -> Any: ...


class Database(ABC):
    """One database of the log; :func:`open_database` picks the kind from the setting."""

    dialect: str
    where: str  # how messages name it: a file, or host:port/dbname

    @abstractmethod
    def read(self) -> AbstractContextManager[Connection]:
        """A connection for reads, each statement on its own."""

    @abstractmethod
    def write(self) -> AbstractContextManager[Connection]:
        """One transaction: committed when the block ends, rolled back when it raises."""

    @abstractmethod
    def lock(self, name: str) -> AbstractContextManager[None]:
        """Held by one process at a time among all that share this database, for as long as the block runs;
        released when the process dies. Raises LockedError when another holds it."""

    def ping(self) -> None:
        with self.read() as db:
            db.execute("SELECT 1").fetchone()

    def close(self) -> None:
        """Let go of the connections (a process that ends closes them anyway)."""


def open_database(location: str | Path) -> Database:
    """A ``postgresql://`` URL opens PostgreSQL; anything else is the path of a SQLite file."""
    if isinstance(location, str) and urlsplit(location).scheme in POSTGRES_SCHEMES:
        return PostgresDatabase(location)
    return SQLiteDatabase(Path(location))


# ---- SQLite


class SQLiteDatabase(Database):
    """A file in WAL mode with a busy timeout, so processes on one machine can write at once.

    Within a process, writes go through one connection, one at a time: opening a
    connection costs more than a turn's inserts (2.3 against 0.6 ms), and writers
    that queue on SQLite's own lock poll it with sleeps of up to tens of
    milliseconds, which the answers that finish in the same decoding step and log
    together would wait through (4 at once: 22 against 4 ms at the 95th
    percentile). Reads open a connection of their own.
    """

    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._writing = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        with self.read() as db:
            db.execute("PRAGMA journal_mode=WAL")

    def _open(self, shared: bool = False) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=not shared)
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    @contextmanager
    def read(self) -> Iterator[Connection]:
        db = self._open()
        try:
            yield _SQLite(db)
        finally:
            db.close()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """BEGIN IMMEDIATE takes SQLite's write lock first, so writers in other processes queue, not fail."""
        with self._writing:
            if self._writer is None:
                self._writer = self._open(shared=True)
            db = self._writer
            db.execute("BEGIN IMMEDIATE")
            try:
                yield _SQLite(db)
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

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        held = FileLock(str(self.path.with_name(f"{self.path.name}.{name}.lock")))
        try:
            held.acquire(timeout=0)
        except Timeout:
            raise LockedError(f"{name} is held by another process on {self.where}") from None
        try:
            yield
        finally:
            held.release()


class _SQLite:
    dialect = "sqlite"

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, params: tuple | list = ()) -> sqlite3.Cursor:
        return self._db.execute(sql, params)


# ---- PostgreSQL


class PostgresDatabase(Database):
    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        try:
            from psycopg_pool import ConnectionPool
        except ImportError:
            raise ConfigError("database_url is PostgreSQL: pip install 'switchboard[postgres]' (psycopg 3)") from None
        parts = urlsplit(url)
        self.url = url
        self.where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or ''}"
        self._pool_class = ConnectionPool
        self._pool = None
        self._pooling = threading.Lock()

    @property
    def pool(self):
        """The connection pool, opened on first use and again after the server went away: a new pool tries
        at once, where the old one would wait out a back-off that doubles with every failed attempt."""
        with self._pooling:
            if self._pool is not None:
                return self._pool
        self._answers()  # outside the lock: callers that find a silent server down wait their timeouts side by side
        with self._pooling:
            if self._pool is None:
                self._pool = self._pool_class(
                    self.url,
                    min_size=1,
                    max_size=POOL_SIZE,
                    kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
                    configure=_dict_rows,
                    check=self._pool_class.check_connection,  # a connection the server dropped is not lent
                    timeout=CONNECT_TIMEOUT_S,
                    open=False,
                    name="switchboard-log",
                )
                self._pool.open(wait=False)
            return self._pool

    def _answers(self) -> None:
        """Connect once before a new pool: a server that is down refuses in milliseconds, where a new pool
        would wait out its whole timeout for a first connection, so every call during an outage after the
        first one is a prompt 503 instead of one held for CONNECT_TIMEOUT_S."""
        import psycopg

        try:
            psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S).close()
        except psycopg.OperationalError as exc:
            raise self._down(exc) from exc

    def _drop_pool(self, pool) -> None:
        with self._pooling:
            if self._pool is pool:
                self._pool = None
        pool.close(timeout=0)  # connections still lent are closed when they come back

    def _down(self, exc: Exception) -> UnavailableError:
        return UnavailableError(
            f"the conversation database at {self.where} does not answer ({type(exc).__name__}); try again shortly",
            retry_after=RETRY_AFTER_S,
        )

    @contextmanager
    def _connection(self, transaction: bool) -> Iterator[Connection]:
        import psycopg
        from psycopg_pool import PoolClosed, PoolTimeout

        pool = self.pool
        try:
            with pool.connection() as conn:
                if transaction:
                    with conn.transaction():
                        yield _Postgres(conn)
                else:
                    yield _Postgres(conn)
        except (psycopg.OperationalError, PoolTimeout, PoolClosed) as exc:
            self._drop_pool(pool)
            raise self._down(exc) from exc

    def read(self) -> AbstractContextManager[Connection]:
        return self._connection(transaction=False)

    def write(self) -> AbstractContextManager[Connection]:
        return self._connection(transaction=True)

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """A session advisory lock on a connection of its own: PostgreSQL drops it with the connection, so a
        process that dies holding it frees it."""
        import psycopg

        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.OperationalError as exc:
            raise self._down(exc) from exc
        try:
            key = zlib.crc32(name.encode("utf-8"))
            if not conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
                raise LockedError(f"{name} is held by another process on {self.where}")
            yield
            # Released before the block's caller goes on: closing alone ends the server's session a moment
            # later, and a caller taking the lock again at once would find it held.
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        finally:
            conn.close()

    def close(self) -> None:
        if self._pool is not None:
            self._drop_pool(self._pool)


def _dict_rows(conn) -> None:
    from psycopg.rows import dict_row

    conn.row_factory = dict_row


class _Postgres:
    dialect = "postgresql"

    def __init__(self, conn) -> None:
        self._conn = conn

    def execute(self, sql: str, params: tuple | list = ()):
        return self._conn.execute(sql.replace("?", "%s"), params)
