"""``kill -9`` trials of real processes: a server with streams in flight, an adapter install, an ingest and a
training run, each killed mid-work; what they leave must be consistent and the next process must work.

Each trial runs the installed command (``python -m bot``) in its own process group and kills the group.
``KILL_TRIALS`` names them for ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest
from cli import kill, read_stderr, serve, start, stream_until_killed, switchboard, wait_for

from adapters.registry import Registry

pytestmark = pytest.mark.slow  # kills served processes with SIGKILL, many times

KILL_TRIALS = ["mid-stream", "mid-install", "mid-ingest", "mid-training"]


def test_kill_9_mid_stream_loses_no_finished_turn_and_leaves_no_half_turn(base_model_dir, make_random_adapter, tmp_path):
    from core.settings import load_settings
    from engine.base_model import base_fingerprint

    home = tmp_path / "home"
    settings = load_settings({"home": home, "base_model": str(base_model_dir)}, environ={})
    registry = Registry(settings.adapters_dir, base_fingerprint(settings))
    registry.install(make_random_adapter(seed=70), "steady")
    tampered = Path(registry.install(make_random_adapter(seed=71), "tampered").path)
    config = json.loads((tampered / "adapter_config.json").read_text())
    (tampered / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": "16"}))  # as an older release let in

    server, url, seen = serve(home, base_model_dir)  # the server starts all the same
    try:
        health = httpx.get(f"{url}/health").json()
        assert {"name": "tampered", "version": 1, "status": "disabled"} in health["adapters"]
        assert "tampered fails its checks and is disabled" in "".join(seen)
        finished: list[str] = []
        for model in ("steady", "base"):
            answer = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
                "model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 3})
            assert answer.status_code == 200, answer.text
            finished.append(answer.json()["switchboard"]["message_id"])
        streaming = threading.Barrier(4)

        def stream(n: int) -> None:
            body = {"model": "base", "stream": True, "max_tokens": 400, "ignore_eos": True,
                    "messages": [{"role": "user", "content": f"Tell story {n}."}]}
            stream_until_killed(url, body, streaming, after_lines=4)

        threads = [threading.Thread(target=stream, args=(n,), daemon=True) for n in range(3)]
        for thread in threads:
            thread.start()
        streaming.wait(timeout=120)
    finally:
        kill(server)
    for thread in threads:
        thread.join(timeout=30)

    server, url, _ = serve(home, base_model_dir)
    try:
        with sqlite3.connect(settings.conversations_db) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            for message_id in finished:
                assert db.execute("SELECT COUNT(*) FROM messages WHERE id = ?", (message_id,)).fetchone()[0] == 1
            users = db.execute("SELECT COUNT(*) FROM messages WHERE role = 'user'").fetchone()[0]
            answers = db.execute("SELECT COUNT(*) FROM messages WHERE role = 'assistant'").fetchone()[0]
            orphans = db.execute(
                "SELECT COUNT(*) FROM messages u WHERE u.role = 'user' AND NOT EXISTS "
                "(SELECT 1 FROM messages a WHERE a.reply_to = u.id)"
            ).fetchone()[0]
        assert users == answers == len(finished) and orphans == 0
        assert httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
            "model": "steady", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).status_code == 200
    finally:
        kill(server)


# ---- mid-install ------------------------------------------------------------------------------------------


def test_kill_9_mid_install_leaves_a_consistent_registry_and_no_debris(base_model_dir, make_random_adapter, tmp_path):
    from core.settings import load_settings
    from engine.base_model import base_fingerprint

    home = tmp_path / "home"
    settings = load_settings({"home": home, "base_model": str(base_model_dir)}, environ={})
    fingerprint = base_fingerprint(settings)
    registry = Registry(settings.adapters_dir, fingerprint)
    source = make_random_adapter(
        seed=72, rank=32, targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    )
    registry.install(source, "target")
    staging = settings.adapters_dir / ".staging"
    for delay in (0.0, 0.05):
        process = start(home, base_model_dir, "adapters", "add", str(source), "--name", "target")
        seen = read_stderr(process)
        wait_for(lambda: staging.is_dir() and any(staging.iterdir()), 300, process, seen, every=0.002)
        time.sleep(delay)
        kill(process)
        reopened = Registry(settings.adapters_dir, fingerprint)
        assert not any(staging.iterdir())
        versions = [m.version for m in reopened.versions("target")]
        assert reopened.get("target").version == versions[-1]
        on_disk = sorted(int(p.name[1:]) for p in (settings.adapters_dir / "target").iterdir() if p.name.startswith("v"))
        assert on_disk == versions  # no version folder that state.json does not list
    current = reopened.get("target").version
    older = [m.version for m in reopened.versions("target")][:-1]
    if older:
        assert reopened.rollback("target").version == older[-1]
    else:
        with pytest.raises(Exception, match="no version before"):
            reopened.rollback("target")
    assert reopened.install(source, "target").version > current


# ---- mid-ingest -------------------------------------------------------------------------------------------


def test_kill_9_mid_ingest_leaves_a_collection_a_re_ingest_completes_without_duplicates(base_model_dir, encoder, tmp_path):
    from core.settings import load_settings
    from knowledge.knowledge_base import KnowledgeBase

    document = tmp_path / "handbook.md"
    document.write_text(
        "\n\n".join(
            f"## Section {n}\n\nRule {n}: the ferry to island {n} leaves pier {n % 9} at {n % 24}:15 and returns "
            f"at {(n + 3) % 24}:45; bicycles cost {n % 7 + 2} euros and dogs travel free on weekdays."
            for n in range(400)
        ),
        encoding="utf-8",
    )
    home = tmp_path / "home"
    process = start(home, base_model_dir, "kb", "ingest", str(document), "--collection", "ferries")
    seen = read_stderr(process)
    wait_for(lambda: "embedding:" in "".join(seen) and " 0%" not in "".join(seen).rsplit("embedding:", 1)[-1][:8],
             300, process, seen)
    kill(process)

    again = switchboard(home, "kb", "ingest", str(document), "--collection", "ferries", "--json", timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    clean_home = tmp_path / "clean"
    with KnowledgeBase(load_settings({"home": clean_home}, environ={}), encoder) as clean:
        expected = clean.ingest([document], "ferries").chunks
    with KnowledgeBase(load_settings({"home": home}, environ={}), encoder, read_only=True) as kb:
        documents = kb.list_documents("ferries")
        assert [(d["source"], d["chunks"]) for d in documents] == [("handbook.md", expected)]
        passages = kb.retrieve("ferry to island 123", ["ferries"])
        assert passages and len({p.id for p in passages}) == len(passages)
        assert len({p.text for p in passages}) == len(passages)  # no chunk stored twice


# ---- mid-training -----------------------------------------------------------------------------------------


def test_kill_9_mid_training_installs_nothing_and_a_new_run_starts(base_model_dir, tmp_path):
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(
        json.dumps({"instruction": f"What is {n} plus {n}?", "output": f"{n} plus {n} is {2 * n}."}) + "\n"
        for n in range(12)
    ))
    home = tmp_path / "home"
    process = start(home, base_model_dir, "train", "--adapter", "sums", "--data", str(data), "--max-steps", "400")
    seen = read_stderr(process)
    wait_for(lambda: re.search(r"training: .*\b[1-9]\d*/400", "".join(seen)), 600, process, seen)  # a step finished
    kill(process)
    assert Registry(home / "adapters").names() == []  # nothing half installed
    assert not any((home / "adapters" / ".staging").glob("*"))
    done = switchboard(home, "train", "--adapter", "sums", "--data", str(data), "--max-steps", "1", "--force",
                       "--json", base_model=base_model_dir, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert Registry(home / "adapters").get("sums").version == 1  # the killed run left nothing behind that a new one trips on
