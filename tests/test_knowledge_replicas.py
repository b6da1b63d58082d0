"""Knowledge shared by replicas on one real Chroma server: what one process ingests, another finds, by keyword
and by vector, within ``knowledge.refresh_s``; writers at once lose nothing; a server that goes away is a clear
503 and comes back without a restart.

The writers are ``switchboard kb ingest`` / ``remove`` in processes of their own; the reader is a
KnowledgeBase in this process, as a serving replica holds one.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cli import switchboard
from servers import ChromaServer

from core.errors import UnavailableError
from core.settings import load_settings
from knowledge.knowledge_base import KnowledgeBase

pytestmark = pytest.mark.slow  # a Chroma server and a dozen CLI processes

COLLECTION = "harbour"
LATE = 3.0  # seconds past refresh_s a reader may take: the CLI's own exit and a rebuild of the keyword index


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    chroma = ChromaServer(tmp_path_factory.mktemp("chroma-server")).start()
    yield chroma
    chroma.stop()


@pytest.fixture(scope="module")
def reader(server, encoder, tmp_path_factory):
    settings = load_settings({"home": tmp_path_factory.mktemp("reader"), "knowledge": {"chroma_url": server.url}}, environ={})
    with KnowledgeBase(settings, encoder) as kb:
        yield kb


def kb_cli(server: ChromaServer, home: Path, *args: str) -> subprocess.CompletedProcess:
    done = switchboard(home, "kb", *args, "--json", timeout=300, settings={"KNOWLEDGE__CHROMA_URL": server.url})
    assert done.returncode == 0, done.stderr
    return done


def found(kb: KnowledgeBase, query: str, source: str) -> dict[str, bool]:
    """Whether each kind of search alone finds ``source`` for ``query``."""
    return {
        mode: any(p.source == source for p in kb.retrieve(query, [COLLECTION], mode=mode, min_score=0.0))
        for mode in ("lexical", "vector")
    }


def wait_until(condition, seconds: float) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, "not seen in time"
        time.sleep(0.1)
    return time.monotonic() - started


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")
    return folder / name


def test_what_another_process_ingests_or_removes_is_found_by_keyword_and_vector_within_refresh_s(server, reader, tmp_path):
    refresh = reader.config.refresh_s
    assert refresh > 0  # the default: a replica asks the server at most this often
    lighthouse = write(tmp_path / "docs", "lighthouse.md", "# Lighthouse\n\nThe lighthouse tours start at 9:40 from gate Q7.")
    kb_cli(server, tmp_path / "writer", "ingest", str(lighthouse), "--collection", COLLECTION)
    seen_after = wait_until(lambda: found(reader, "When do the lighthouse tours start?", "lighthouse.md") == {"lexical": True, "vector": True}, refresh + LATE)

    kb_cli(server, tmp_path / "writer", "remove", "lighthouse.md", "--collection", COLLECTION)
    gone_after = wait_until(lambda: found(reader, "When do the lighthouse tours start?", "lighthouse.md") == {"lexical": False, "vector": False}, refresh + LATE)
    print(f"seen {seen_after:.1f}s and gone {gone_after:.1f}s after the other process finished (refresh_s {refresh})")


def test_two_processes_ingesting_at_once_lose_nothing(server, reader, encoder, tmp_path):
    documents = {
        f"pier{n}.md": f"# Pier {n}\n\n" + " ".join(f"Ferry line {n}-{k} leaves pier {n} at {k}:1{n}." for k in range(60))
        for n in range(2)
    }
    paths = [write(tmp_path / f"docs{n}", name, text) for n, (name, text) in enumerate(documents.items())]
    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda n: kb_cli(server, tmp_path / f"writer{n}", "ingest", str(paths[n]), "--collection", COLLECTION), range(2)))
    chunks = {name: json.loads(done.stdout)["chunks"] for name, done in zip(documents, reports)}
    assert all(count > 1 for count in chunks.values())

    settings = load_settings({"home": tmp_path / "third", "knowledge": {"chroma_url": server.url}}, environ={})
    with KnowledgeBase(settings, encoder) as third:  # a replica that starts now: everything, exactly once
        listed = {d["source"]: d["chunks"] for d in third.list_documents(COLLECTION)}
        assert {name: listed.get(name) for name in documents} == chunks
        assert third.retrieve("Which pier does ferry line 1-7 leave from?", [COLLECTION], mode="lexical")[0].source == "pier1.md"
    wait_until(lambda: {d["source"]: d["chunks"] for d in reader.list_documents(COLLECTION)} == listed, reader.config.refresh_s + LATE)


def test_two_instances_writing_at_once_each_end_with_the_others_documents(server, encoder, tmp_path):
    """Two replicas ingest one file at a time, interleaved, from two threads: each writer, not only a newcomer,
    ends with every document (a writer that kept the index it derived would miss the other's)."""
    words = ["aardvark", "bison", "caracal", "dingo", "echidna", "fossa"]
    paths = [
        write(tmp_path / "docs", f"{word}.md", f"# The {word}\n\n" + f"The {word} enclosure is cleaned at {n}:30. " * 40)
        for n, word in enumerate(words)
    ]
    settings = [
        load_settings({"home": tmp_path / f"w{n}", "knowledge": {"chroma_url": server.url}}, environ={}) for n in range(2)
    ]
    writers = [KnowledgeBase(s, encoder) for s in settings]
    start = threading.Barrier(2)

    def ingest(n: int) -> int:
        start.wait()
        return sum(writers[n].ingest([path], "enclosures").chunks for path in paths[n::2])

    with ThreadPoolExecutor(2) as pool:
        chunks = sum(pool.map(ingest, range(2)))
    for writer in writers:
        with writer:
            wait_until(
                lambda kb=writer: all(
                    [p.source for p in kb.retrieve(word, ["enclosures"], mode="lexical")][:1] == [f"{word}.md"]
                    for word in words
                ),
                writer.config.refresh_s + LATE,
            )
            assert sum(d["chunks"] for d in writer.list_documents("enclosures")) == chunks


def test_a_replica_started_while_chroma_is_down_serves_knowledge_once_it_is_back(server, encoder, tmp_path):
    server.stop()
    try:
        settings = load_settings({"home": tmp_path / "late", "knowledge": {"chroma_url": server.url}}, environ={})
        late = KnowledgeBase(settings, encoder)  # starts: the rest of a replica does not need Chroma
        with pytest.raises(UnavailableError, match=f"Chroma server at {server.url} does not answer"):
            late.retrieve("ferry line", [COLLECTION])
    finally:
        server.start()
    with late:
        assert late.ping() > 0
        late.ingest([write(tmp_path / "docs", "kiosk.md", "# Kiosk\n\nThe ticket kiosk sells zephyr passes.")], "late")
        assert late.retrieve("zephyr passes", ["late"], mode="lexical")[0].source == "kiosk.md"


def test_a_chroma_server_that_stops_gives_unavailable_then_the_same_knowledge_base_recovers(server, reader, tmp_path):
    assert reader.ping() > 0  # milliseconds
    notes = write(tmp_path / "docs", "notes.md", "# Notes\n\nThe ferry office opens at 8.")
    server.stop()
    try:
        for call in (
            reader.ping,
            lambda: reader.retrieve("ferry line", [COLLECTION], min_score=0.0),
            reader.list_collections,
            lambda: reader.ingest([notes], COLLECTION),
        ):
            time.sleep(reader.config.refresh_s)  # past what this replica remembers of the collection
            with pytest.raises(UnavailableError, match=f"Chroma server at {server.url} does not answer") as refused:
                call()
            assert refused.value.status_code == 503 and refused.value.retry_after > 0
    finally:
        server.start()
    assert reader.ping() > 0
    assert reader.retrieve("Which pier does ferry line 0-3 leave from?", [COLLECTION], mode="lexical")[0].source == "pier0.md"
