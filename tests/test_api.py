"""The HTTP API on a live server over loopback: the official openai client, SSE, feedback, admin, bad requests."""

from __future__ import annotations

import io
import json
import sqlite3
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import httpx
import pytest
from openai import OpenAI

WARRANTY_QUESTION = "What is the warranty on your backpacks?"
LEGAL_QUESTION = "How long is the statutory guarantee under the Act?"


@pytest.fixture(scope="module")
def client(live_server) -> OpenAI:
    return OpenAI(base_url=f"{live_server.url}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def http(live_server):
    with httpx.Client(base_url=live_server.url, timeout=300) as session:
        yield session


def admin_headers(live_server) -> dict[str, str]:
    return {"Authorization": f"Bearer {live_server.token}"}


def logged_turns(live_server) -> int:
    with sqlite3.connect(live_server.parts.settings.conversations_db) as db:
        return db.execute("SELECT COUNT(*) FROM messages WHERE role = 'assistant'").fetchone()[0]


def check_sources(sources: list[dict]) -> None:
    assert [s["number"] for s in sources] == list(range(1, len(sources) + 1))
    for source in sources:
        assert {"id", "source", "text", "score"} <= set(source)
        assert source["text"] and 0.0 <= source["score"] <= 1.0


def test_models_lists_auto_base_and_enabled_adapters(client):
    ids = [model.id for model in client.models.list()]
    assert ids[:2] == ["auto", "base"]
    assert {"support", "legal"} <= set(ids)


def test_openai_client_auto_routes_grounds_and_logs(client, live_server):
    response = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": WARRANTY_QUESTION}], max_tokens=8
    )
    extra = response.model_extra["switchboard"]
    assert response.model == extra["adapter"] == "support"
    assert extra["adapter_version"] == 1 and 0 < extra["confidence"] <= 1
    check_sources(extra["sources"])
    assert {s["source"] for s in extra["sources"]} <= {"warranty.md", "returns.txt"} and extra["sources"]
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].finish_reason in ("stop", "length")
    assert 0 < response.usage.completion_tokens <= 8
    logged = live_server.parts.log.history(extra["conversation_id"], 2)
    assert logged[-1]["content"] == response.choices[0].message.content


def test_openai_client_streams_a_named_adapter(client, live_server):
    stream = client.chat.completions.create(
        model="legal", messages=[{"role": "user", "content": LEGAL_QUESTION}], stream=True, max_tokens=8,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    first, last_choice = chunks[0], next(c for c in reversed(chunks) if c.choices)
    assert first.choices[0].delta.role == "assistant"
    assert first.model_extra["switchboard"]["adapter"] == "legal"  # who answers is known before the first token
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(contents) == 1  # an answer with sources is released whole, once checked against them
    final = last_choice.model_extra["switchboard"]
    assert last_choice.choices[0].finish_reason in ("stop", "length")
    assert final["adapter"] == "legal" and final["confidence"] == 1.0 and final["message_id"]
    check_sources(final["sources"])
    assert chunks[-1].usage.completion_tokens <= 8
    assert live_server.parts.log.history(final["conversation_id"], 2)[-1]["content"] == text.strip()


def test_an_answer_without_sources_streams_token_by_token(client):
    stream = client.chat.completions.create(
        model="base", messages=[{"role": "user", "content": "Say hello."}], stream=True, max_tokens=8
    )
    chunks = [c for c in stream if c.choices and c.choices[0].delta.content]
    assert len(chunks) >= 2  # streamed, not one blob


def test_base_model_and_conversation_continuation(client):
    first = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "Hi!"}], max_tokens=4)
    conversation = first.model_extra["switchboard"]["conversation_id"]
    assert first.model == "base" and first.model_extra["switchboard"]["sources"] == []
    again = client.chat.completions.create(
        model="base", messages=[{"role": "user", "content": "Hi!"}], max_tokens=4,
        extra_body={"conversation_id": conversation},
    )
    assert again.model_extra["switchboard"]["conversation_id"] == conversation
    assert again.usage.prompt_tokens > first.usage.prompt_tokens  # the logged turn is in the prompt


def test_ignore_eos_generates_exactly_max_tokens(client):
    """vLLM's extension, which the serving benchmark uses so every request costs the same."""
    ask = dict(model="base", messages=[{"role": "user", "content": "Say just: yes."}], max_tokens=48)
    plain = client.chat.completions.create(**ask)
    forced = client.chat.completions.create(**ask, extra_body={"ignore_eos": True})
    assert plain.choices[0].finish_reason == "stop" and plain.usage.completion_tokens < 48
    assert forced.choices[0].finish_reason == "length" and forced.usage.completion_tokens == 48


def test_feedback_is_stored(http, client, live_server):
    response = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "Hello"}], max_tokens=3)
    message_id = response.model_extra["switchboard"]["message_id"]
    answer = http.post("/v1/feedback", json={"message_id": message_id, "rating": "down", "correction": "Hello there!"})
    assert answer.status_code == 200, answer.text
    with sqlite3.connect(live_server.parts.settings.conversations_db) as db:
        row = db.execute("SELECT rating, correction FROM feedback WHERE message_id = ?", (message_id,)).fetchone()
    assert row == ("down", "Hello there!")
    assert http.post("/v1/feedback", json={"message_id": "nope", "rating": "up"}).status_code == 404
    assert http.post("/v1/feedback", json={"message_id": message_id, "rating": "meh"}).status_code == 400


def test_twenty_parallel_chats(client, live_server):
    before = logged_turns(live_server)

    def chat(i: int):
        return client.chat.completions.create(
            model="base", messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=3
        )

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(chat, range(20)))
    message_ids = {r.model_extra["switchboard"]["message_id"] for r in responses}
    assert len(message_ids) == 20
    assert logged_turns(live_server) - before == 20


def test_admin_routes_refuse_a_missing_or_wrong_token(http, live_server, make_random_adapter):
    parts = live_server.parts
    revision, collections = parts.registry.revision(), parts.knowledge.list_collections()
    folder = make_random_adapter(41)
    files = [("files", (p.name, p.read_bytes())) for p in sorted(folder.iterdir()) if p.is_file()]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": live_server.token}):
        calls = [
            http.post("/admin/adapters", data={"name": "intruder"}, files=files, headers=headers),
            http.delete("/admin/adapters/support", headers=headers),
            http.post("/admin/adapters/support/disable", headers=headers),
            http.post("/admin/knowledge/support", files=[("files", ("x.txt", b"stolen"))], headers=headers),
            http.delete("/admin/knowledge/support/warranty.md", headers=headers),
            http.get("/admin/adapters", headers=headers),
            http.post("/admin/train", json={"adapter": "support", "from_logs": True}, headers=headers),
            http.get("/admin/train/20240101-000000-abcdef", headers=headers),
        ]
        for call in calls:
            assert call.status_code == 401, (call.request.url, call.text)
            assert "admin token" in call.json()["error"]["message"]
    assert parts.registry.revision() == revision
    assert parts.knowledge.list_collections() == collections


def test_admin_installs_enables_and_removes_an_adapter_live(http, client, live_server, make_random_adapter):
    auth = admin_headers(live_server)
    folder = make_random_adapter(42)
    files = [("files", (p.name, p.read_bytes())) for p in sorted(folder.iterdir()) if p.is_file()]
    form = {"name": "billing", "description": "Invoices", "examples": "I need an invoice\nSend me a receipt",
            "collections": "support"}
    installed = http.post("/admin/adapters", data=form, files=files, headers=auth)
    try:
        assert installed.status_code == 201, installed.text
        assert installed.json()["version"] == 1 and installed.json()["examples"] == 2
        assert "billing" in [m.id for m in client.models.list()]
        answer = client.chat.completions.create(
            model="billing", messages=[{"role": "user", "content": WARRANTY_QUESTION}], max_tokens=3
        )
        assert answer.model_extra["switchboard"]["adapter"] == "billing"

        bundle = io.BytesIO()
        with zipfile.ZipFile(bundle, "w") as archive:
            for name, content in ((n, c) for _, (n, c) in files):
                archive.writestr(f"billing-adapter/{name}", content)
        zipped = http.post("/admin/adapters", data=form, files=[("files", ("billing.zip", bundle.getvalue()))], headers=auth)
        assert zipped.status_code == 201, zipped.text
        assert zipped.json()["version"] == 2

        assert http.post("/admin/adapters/billing/disable", headers=auth).json()["status"] == "disabled"
        assert "billing" not in [m.id for m in client.models.list()]
        refused = http.post("/v1/chat/completions", json={"model": "billing", "messages": [{"role": "user", "content": "hi"}]})
        assert refused.status_code == 404 and "billing" in refused.json()["error"]["message"]
        assert http.delete("/admin/adapters/billing", headers=auth).status_code == 200
        assert http.get("/health").json()["adapters"] == [
            {"name": "legal", "version": 1, "status": "enabled"},
            {"name": "support", "version": 1, "status": "enabled"},
        ]
        assert not any(key.startswith("billing__") for key in live_server.parts.engine.resident_adapters)
    finally:  # the session's server serves the demo adapters only to the tests after this one, even when it fails
        if "billing" in live_server.parts.admin.adapter_names():
            live_server.parts.admin.remove_adapter("billing")


def test_admin_refuses_pickles_and_escaping_file_names(http, live_server, make_random_adapter):
    auth = admin_headers(live_server)
    folder = make_random_adapter(43)
    config = (folder / "adapter_config.json").read_bytes()
    weights = (folder / "adapter_model.safetensors").read_bytes()
    revision = live_server.parts.registry.revision()

    pickled = [("files", ("adapter_config.json", config)), ("files", ("adapter_model.bin", weights))]
    refused = http.post("/admin/adapters", data={"name": "pickled"}, files=pickled, headers=auth)
    assert refused.status_code == 422 and "pickle" in refused.json()["error"]["message"]

    escaping = [("files", ("../adapter_config.json", config)), ("files", ("adapter_model.safetensors", weights))]
    refused = http.post("/admin/adapters", data={"name": "escaping"}, files=escaping, headers=auth)
    assert refused.status_code == 400 and "plain file name" in refused.json()["error"]["message"]

    bundle = io.BytesIO()
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.writestr("../../adapter_config.json", config)
        archive.writestr("adapter_model.safetensors", weights)
    refused = http.post("/admin/adapters", data={"name": "zipslip"}, files=[("files", ("a.zip", bundle.getvalue()))],
                        headers=auth)
    assert refused.status_code == 400
    assert live_server.parts.registry.revision() == revision
    assert live_server.parts.registry.names() == ["legal", "support"]


def test_admin_uploads_searches_and_removes_a_document(http, client, live_server):
    auth = admin_headers(live_server)
    name = "會員計劃.md"
    text = "# Loyalty club\n\nMembers of the Northwind loyalty club earn 7 points for every dollar spent on tents.\n"
    uploaded = http.post("/admin/knowledge/support", files=[("files", (name, text.encode()))], headers=auth)
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["documents"] == 1 and uploaded.json()["chunks"] >= 1
    answer = client.chat.completions.create(
        model="support", messages=[{"role": "user", "content": "How many loyalty club points do tents earn?"}],
        max_tokens=3,
    )
    extra = answer.model_extra["switchboard"]
    assert extra["sources"][0]["source"] == name
    assert extra["checks"]["action"] in ("passed", "repaired", "replaced")
    assert extra["retrieval"] == {}  # a named adapter is not routed, so no retrieval took part in routing

    changed = text.replace("7 points", "9 points").encode()
    clash = http.post("/admin/knowledge/support", files=[("files", (name, changed))], headers=auth).json()
    assert clash["documents"] == 0 and "replace=true" in clash["skipped"][0]["reason"]  # an upload proves no path
    replaced = http.post("/admin/knowledge/support", files=[("files", (name, changed))], data={"replace": "true"},
                         headers=auth).json()
    assert replaced["documents"] == 1 and not replaced["skipped"]
    removed = http.delete(f"/admin/knowledge/support/{quote(name)}", headers=auth)
    assert removed.status_code == 200 and removed.json()["chunks"] >= 1
    assert name not in [d["source"] for d in live_server.parts.knowledge.list_documents("support")]
    assert http.delete(f"/admin/knowledge/support/{quote(name)}", headers=auth).status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"model": "auto", "messages": []}, 400, "empty"),
        ({"model": "auto", "messages": [{"role": "user", "content": "  "}]}, 400, "empty"),
        ({"model": "nobody", "messages": [{"role": "user", "content": "hi"}]}, 404, "nobody"),
        ({"model": "nobody", "stream": True, "messages": [{"role": "user", "content": "hi"}]}, 404, "nobody"),
        ({"model": "base", "messages": [{"role": "assistant", "content": "hi"}]}, 400, "last message"),
        ({"model": "base", "n": 2, "messages": [{"role": "user", "content": "hi"}]}, 400, "'n'"),
        ({"messages": [{"role": "user", "content": "hi"}]}, 400, "'model'"),
        ({"model": "base", "messages": [{"role": "user", "content": "word " * 9000}]}, 400, "too long"),
        ({"model": "base", "conversation_id": "c" * 200, "messages": [{"role": "user", "content": "hi"}]}, 400,
         "conversation id"),
    ],
)
def test_bad_chat_requests_get_a_clear_4xx(http, body, status, words):
    answer = http.post("/v1/chat/completions", json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert words in error["message"] and error["type"]


def test_malformed_and_oversized_bodies_are_refused_and_the_server_keeps_serving(http, live_server):
    malformed = http.post("/v1/chat/completions", content=b'{"model": "auto", "messages": [', headers={"content-type": "application/json"})
    assert malformed.status_code == 400 and "not valid JSON" in malformed.json()["error"]["message"]
    cap = live_server.parts.settings.server.max_body_bytes
    huge = json.dumps({"model": "base", "messages": [{"role": "user", "content": "x" * (cap + 10)}]})
    oversized = http.post("/v1/chat/completions", content=huge, headers={"content-type": "application/json"})
    assert oversized.status_code == 413 and str(cap) in oversized.json()["error"]["message"]

    def chunked():
        for _ in range(cap // 65536 + 2):
            yield b"x" * 65536

    streamed = http.post("/v1/chat/completions", content=chunked(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert http.get("/health").json()["status"] == "ok"


def test_admin_training_runs_start_in_the_background_and_report_their_state(http, live_server, tmp_path):
    auth = admin_headers(live_server)
    refused = http.post("/admin/train", json={"adapter": "support"}, headers=auth)
    assert refused.status_code == 400 and "training data" in refused.json()["error"]["message"]
    assert http.post("/admin/train", json=["support"], headers=auth).status_code == 400
    assert http.get("/admin/train/20240101-000000-abcdef", headers=auth).status_code == 404

    missing = tmp_path / "missing.jsonl"
    started = http.post("/admin/train", json={"adapter": "newcomer", "data": [str(missing)], "max_steps": 1}, headers=auth)
    assert started.status_code == 202, started.text
    run_id = started.json()["run_id"]
    deadline = time.monotonic() + 120
    while (status := http.get(f"/admin/train/{run_id}", headers=auth).json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status["state"] == "failed" and "missing.jsonl" in status["error"]
    assert "newcomer" not in live_server.parts.registry.names()
