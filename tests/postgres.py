"""A throwaway PostgreSQL 15 cluster for the tests: started once per session, stopped and removed at its end.

PostgreSQL refuses to run as root (as the tests do here and in CI), so the
cluster's folder belongs to the ``postgres`` user and initdb/pg_ctl run under
``runuser -u postgres --``. It listens on 127.0.0.1 on a free port (its unix
socket in the same folder) with ``trust`` authentication. ``pg_stop()`` and
``pg_start()`` stop and start the same cluster, so a test can take the database
away from a running process and give it back. Missing binaries fail the test
with the command that installs them: a skipped database test proves nothing.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path("/usr/lib/postgresql/15/bin")
INSTALL = "apt-get install -y postgresql-15"
USER = "postgres"


@dataclass
class Cluster:
    folder: Path
    port: int

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def pg_ctl(self, *args: str) -> None:
        _as_postgres(str(BIN / "pg_ctl"), "-D", str(self.data), *args)


_cluster: Cluster | None = None


def _as_postgres(*command: str) -> None:
    done = subprocess.run(["runuser", "-u", USER, "--", *command], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr or done.stdout}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_cluster() -> Cluster:
    if not (BIN / "initdb").is_file():
        pytest.fail(f"PostgreSQL 15 is not installed ({BIN} has no initdb): {INSTALL}")
    folder = Path(tempfile.mkdtemp(prefix="switchboard-pg-"))
    shutil.chown(folder, USER, USER)
    cluster = Cluster(folder, _free_port())
    _as_postgres(str(BIN / "initdb"), "-D", str(cluster.data), "-U", USER, "-A", "trust", "--no-sync", "-E", "UTF8")
    global _cluster
    _cluster = cluster
    pg_start()
    return cluster


def pg_start() -> None:
    """Start (again) the session's cluster on its port, and wait until it accepts connections."""
    assert _cluster is not None, "no PostgreSQL cluster in this session: use the postgres_url fixture first"
    options = f"-c listen_addresses=127.0.0.1 -p {_cluster.port} -k {_cluster.folder} -c fsync=off"
    _cluster.pg_ctl("-l", str(_cluster.folder / "server.log"), "-o", options, "-w", "start")


def pg_stop() -> None:
    """Stop the session's cluster at once (open connections break, as when a database server goes away)."""
    assert _cluster is not None, "no PostgreSQL cluster in this session: use the postgres_url fixture first"
    _cluster.pg_ctl("-m", "immediate", "-w", "stop")


def fresh_database(url: str) -> str:
    """A new empty database in the cluster of ``url``; returns its URL."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of the session's throwaway PostgreSQL 15 cluster (its ``postgres`` database)."""
    global _cluster
    cluster = _start_cluster()
    try:
        yield cluster.url()
    finally:
        try:
            cluster.pg_ctl("-m", "immediate", "stop")
        except RuntimeError:
            pass  # a test left it stopped
        _cluster = None
        shutil.rmtree(cluster.folder, ignore_errors=True)


@pytest.fixture
def postgres_db(postgres_url: str) -> str:
    """URL of a new empty database for one test."""
    return fresh_database(postgres_url)
