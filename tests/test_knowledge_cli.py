"""`switchboard kb ...` in real subprocesses, the writer lock across processes, and a real Chroma server."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from cli import switchboard

from core.settings import load_settings
from knowledge.knowledge_base import KnowledgeBase

pytestmark = pytest.mark.slow  # starts a Chroma server


def kb_cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    return switchboard(home, "kb", *args, timeout=180)


@pytest.fixture(scope="module")
def notes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("notes")
    (folder / "ferry.md").write_text("# Ferry\n\nThe harbour ferry leaves every twenty minutes from pier 3.", "utf-8")
    (folder / "museum.txt").write_text("The maritime museum is closed on Mondays.", "utf-8")
    (folder / "empty.txt").write_text("", "utf-8")
    return folder


def test_cli_ingest_search_list_remove_and_the_lock_against_a_second_writer(tmp_path, notes, encoder):
    home = tmp_path / "home"
    done = kb_cli(
        home,
        "ingest",
        str(notes / "ferry.md"),
        str(notes / "museum.txt"),
        str(notes / "empty.txt"),
        "--collection",
        "city",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["collection"], report["documents"], report["chunks"]) == ("city", 2, 2)
    assert report["skipped"] == [{"path": str(notes / "empty.txt"), "reason": "empty file"}]

    # The server holds the writer lock for its lifetime; here this test process plays the server.
    with KnowledgeBase(load_settings({"home": home}, environ={}), encoder) as server:
        refused = kb_cli(home, "ingest", str(notes / "museum.txt"), "--collection", "city")
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines() == [
            f"error: the knowledge base is in use by another process (pid {os.getpid()}); "
            "stop it or upload through the server's admin API"
        ]
        assert kb_cli(home, "remove", "museum.txt", "--collection", "city").returncode == 1

        found = kb_cli(home, "search", "How often does the ferry leave?", "--collection", "city", "--json")
        assert found.returncode == 0, found.stderr
        passages = json.loads(found.stdout)
        assert passages[0]["source"] == "ferry.md" and "twenty minutes" in passages[0]["text"]
        assert {"id", "source", "text", "score", "section"} <= set(passages[0])

        listed = kb_cli(home, "list", "--json")
        assert json.loads(listed.stdout) == [{"name": "city", "documents": 2, "chunks": 2}]
        assert server.search("museum opening days", ["city"])[0].source == "museum.txt"

    missing = kb_cli(home, "search", "anything", "--collection", "nowhere")
    assert (
        missing.returncode == 1
        and missing.stderr.strip() == "error: no knowledge collection 'nowhere' (collections: city)"
    )

    removed = kb_cli(home, "remove", "museum.txt", "--collection", "city", "--json")
    assert removed.returncode == 0, removed.stderr
    assert json.loads(removed.stdout) == {"collection": "city", "source": "museum.txt", "chunks": 1}
    documents = kb_cli(home, "list", "--collection", "city", "--json")
    assert [d["source"] for d in json.loads(documents.stdout)] == ["ferry.md"]


def test_same_code_against_a_chroma_server(tmp_path, notes, encoder, chroma_server):
    settings = load_settings({"home": tmp_path / "home", "knowledge": {"chroma_url": chroma_server}}, environ={})
    with KnowledgeBase(settings, encoder) as kb:
        report = kb.ingest([notes / "ferry.md", notes / "museum.txt"], "city")
        assert (report.documents, report.chunks) == (2, 2)
        assert kb.search("Which day is the museum closed?", ["city"])[0].source == "museum.txt"
        kb.remove("museum.txt", "city")
        assert kb.list_collections() == [{"name": "city", "documents": 1, "chunks": 1}]
    # No lock against a server: a second client sees the same store and a consistent lexical index, at once
    # when it asks the server on every query (refresh_s 0; tests/test_knowledge_replicas.py waits out the default).
    every_query = settings.model_copy(update={"knowledge": settings.knowledge.model_copy(update={"refresh_s": 0.0})})
    with KnowledgeBase(every_query, encoder) as first, KnowledgeBase(every_query, encoder) as second:
        assert second.retrieve("museum closed Mondays", ["city"], mode="lexical") == []
        first.ingest([notes / "museum.txt"], "city")
        assert second.retrieve("museum closed Mondays", ["city"], mode="lexical")[0].source == "museum.txt"
