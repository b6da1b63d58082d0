"""Many front ends, one state: two ``switchboard serve`` replicas on one PostgreSQL, one Chroma server, one
shared adapters folder and one vLLM engine, all real servers on loopback ports.

What one replica does, the other sees: a rating, a document, an adapter and its rollback, a training run and
its deploy. Load split across both is logged exactly once; a replica killed under load leaves no half turn and
comes back clean; a database or Chroma server that goes away is a 503 naming it, then recovery, no restart.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from cli import kill, serve, switchboard
from conftest import style_chats
from servers import ChromaServer

from adapters.registry import Registry
from conversations.log import ConversationLog

pytestmark = pytest.mark.slow  # two servers, PostgreSQL, Chroma and vLLM; kills and outages

TOKEN = "replica-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FOLLOW_S = 0.5
SEEN_WITHIN_S = 10.0  # the "within a few seconds", with room for this 2-core machine under load
FACT = "The harbour ferry to Lindholm leaves from pier 7 at 10:25 every morning."


class Replica:
    """One ``switchboard serve`` process with its own home; ``start`` again after ``kill`` is a restart."""

    def __init__(self, home: Path, base_model: Path, settings: dict[str, str]) -> None:
        self.home, self.base_model, self.settings = home, base_model, settings
        self.process = None
        self.url = ""

    def start(self) -> "Replica":
        self.process, self.url, self.seen = serve(self.home, self.base_model, **self.settings)
        return self

    def kill(self) -> None:
        kill(self.process)

    def chat(self, message: str, model: str = "base", **options) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": message}], **options}
        return httpx.post(f"{self.url}/v1/chat/completions", json=body, timeout=300)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers=AUTH, timeout=60)

    def post(self, path: str, **kwargs) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", headers=AUTH, timeout=300, **kwargs)


@pytest.fixture(scope="module")
def cluster(postgres, vllm_server, base_model_dir, tmp_path_factory):
    chroma = ChromaServer(tmp_path_factory.mktemp("replica-chroma")).start()
    settings = {
        "DATABASE_URL": postgres.new_database(),
        "KNOWLEDGE__CHROMA_URL": chroma.url,
        "REGISTRY_DIR": str(tmp_path_factory.mktemp("shared-adapters")),
        "SERVER__FOLLOW_S": str(FOLLOW_S),
        "ENGINE__BACKEND": "vllm",
        "ENGINE__URL": vllm_server.url,
        "ADMIN_TOKEN": TOKEN,
        "GENERATION__MAX_NEW_TOKENS": "8",
    }
    replicas = [Replica(tmp_path_factory.mktemp(f"replica-{n}"), base_model_dir, settings) for n in "ab"]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(Replica.start, replicas))
    yield replicas, chroma, settings
    for replica in replicas:
        replica.kill()
    chroma.stop()


def log_of(cluster) -> ConversationLog:
    return ConversationLog(cluster[2]["DATABASE_URL"])


def within(seconds: float, condition) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, "not seen in time"
        time.sleep(0.1)
    return time.monotonic() - started


def adapter_files(folder: Path) -> list:
    return [("files", (p.name, p.read_bytes())) for p in sorted(folder.iterdir()) if p.is_file()]


def vllm_models(vllm_server) -> set[str]:
    return {m["id"] for m in httpx.get(f"{vllm_server.url}/v1/models", timeout=10).json()["data"]}


def vllm_loads(vllm_server, key: str) -> int:
    """How many times the vLLM server loaded ``key`` (its log says so once per load)."""
    text = Path(vllm_server.log_file).read_text(encoding="utf-8", errors="replace")
    return sum(1 for line in text.splitlines() if "Loaded new LoRA adapter" in line and f"'{key}'" in line)


def test_a_chat_on_one_replica_rated_on_the_other_is_one_turn_with_its_rating(cluster):
    (a, b), _, settings = cluster
    answer = a.chat("Say hello to the harbour.")
    assert answer.status_code == 200, answer.text
    turn = answer.json()["switchboard"]
    rated = httpx.post(f"{b.url}/v1/feedback", json={
        "message_id": turn["message_id"], "rating": "down", "correction": "Hello, harbour!",
        "feedback_token": turn["feedback_token"]}, timeout=30)
    assert rated.status_code == 200 and rated.json()["trusted"] is True  # B knows A's tokens: one shared key

    exported = switchboard(b.home, "logs", "export", "--corrected-only", "--json", settings=settings)  # any process
    assert exported.returncode == 0, exported.stderr
    (record,) = [r for r in json.loads(exported.stdout) if r["metadata"]["message_id"] == turn["message_id"]]
    assert record["metadata"]["rating"] == "down" and record["messages"][-1]["content"] == "Hello, harbour!"


def test_an_adapter_and_a_document_added_on_one_replica_are_served_by_the_other(cluster, make_random_adapter, vllm_server):
    (a, b), _, _ = cluster
    form = {"name": "harbour", "description": "Harbour timetables", "collections": "harbour",
            "examples": "When does the ferry leave?\nWhich pier is the ferry at?"}
    first = a.post("/admin/adapters", data=form, files=adapter_files(make_random_adapter(91)))
    assert first.status_code == 201, first.text
    ingested = a.post("/admin/knowledge/harbour", files=[("files", ("ferries.md", f"# Ferries\n\n{FACT}".encode()))])
    assert ingested.status_code == 200 and ingested.json()["chunks"] == 1, ingested.text

    def served_by_b(version: int) -> bool:
        reply = b.chat("Which pier does the Lindholm ferry leave from?", model="harbour")
        return reply.status_code == 200 and reply.json()["switchboard"]["adapter_version"] == version

    within(SEEN_WITHIN_S, lambda: "harbour" in [m["id"] for m in b.get("/v1/models").json()["data"]])
    within(SEEN_WITHIN_S, lambda: served_by_b(1))
    sources = b.chat("Which pier does the Lindholm ferry leave from?", model="harbour").json()["switchboard"]["sources"]
    assert [s["source"] for s in sources] == ["ferries.md"]  # found on B, ingested through A

    second = a.post("/admin/adapters", data=form, files=adapter_files(make_random_adapter(92)))
    assert second.status_code == 201 and second.json()["version"] == 2
    within(SEEN_WITHIN_S, lambda: served_by_b(2))
    assert a.post("/admin/adapters/harbour/rollback").json()["version"] == 1
    within(SEEN_WITHIN_S, lambda: served_by_b(1))

    # The engine changed once per change, whichever replica served the version: v1 loaded at its install and
    # at the rollback (v2's install unloaded it), v2 once; after the rollback the server holds v1 alone.
    registry = Registry(Path(cluster[2]["REGISTRY_DIR"]))
    v1, v2 = registry.get("harbour", 1).key, registry.get("harbour", 2).key
    assert (vllm_loads(vllm_server, v1), vllm_loads(vllm_server, v2)) == (2, 1)
    within(SEEN_WITHIN_S, lambda: v2 not in vllm_models(vllm_server))
    assert v1 in vllm_models(vllm_server)


def test_forty_chats_split_across_both_replicas_are_each_logged_exactly_once(cluster):
    replicas, _, _ = cluster
    log = log_of(cluster)
    before = log.count_messages()

    def ask(n: int) -> httpx.Response:
        return replicas[n % 2].chat(f"Give me harbour fact number {n}.")

    with ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(ask, range(40)))
    succeeded = [r.json()["switchboard"]["message_id"] for r in answers if r.status_code == 200]
    assert len(succeeded) >= 36, [r.text for r in answers if r.status_code != 200][:3]  # 503s tell to retry
    assert all(r.status_code in (200, 503) for r in answers)
    logged = [t.message_id for t in log.turns(since="2000-01-01")]
    assert all(logged.count(message_id) == 1 for message_id in succeeded)
    assert log.count_messages() == before + 2 * len(succeeded)


def half_turns(log: ConversationLog) -> int:
    """User messages logged without their answer: what a write that is not one transaction would leave."""
    with log.database.read() as db:
        return db.execute(
            "SELECT COUNT(*) AS n FROM messages u WHERE u.role = 'user' "
            "AND NOT EXISTS (SELECT 1 FROM messages a WHERE a.reply_to = u.id)"
        ).fetchone()["n"]


def test_a_replica_killed_under_load_loses_only_its_in_flight_turns_and_comes_back_clean(cluster):
    (a, b), _, _ = cluster
    log = log_of(cluster)
    streaming = threading.Barrier(5)

    def stream(n: int) -> None:
        body = {"model": "base", "stream": True, "max_tokens": 300, "ignore_eos": True,
                "messages": [{"role": "user", "content": f"Tell the long story of pier {n}."}]}
        try:
            with httpx.stream("POST", f"{a.url}/v1/chat/completions", json=body, timeout=120) as response:
                for number, _ in enumerate(response.iter_lines()):
                    if number == 3:
                        streaming.wait(timeout=120)
        except httpx.HTTPError:
            pass  # the replica died under it: this turn is lost, as the issue allows

    streams = [threading.Thread(target=stream, args=(n,)) for n in range(4)]
    for thread in streams:
        thread.start()
    streaming.wait(timeout=120)
    before = log.count_messages()
    a.kill()
    for thread in streams:
        thread.join(timeout=60)
    after_b = [b.chat(f"Is the harbour open, question {n}?") for n in range(3)]
    assert [r.status_code for r in after_b] == [200] * 3  # the other replica kept serving
    assert log.count_messages() == before + 6  # B's turns; A's in-flight streams left nothing
    assert half_turns(log) == 0

    a.start()  # the same home, a new process
    assert a.chat("Back again?").status_code == 200
    assert a.get("/health").json()["status"] == "ok"
    assert half_turns(log) == 0


def test_one_training_run_across_replicas_seen_from_both_and_its_deploy_served_by_the_other(cluster, tmp_path):
    (a, b), _, _ = cluster
    data = tmp_path / "signoff.jsonl"
    data.write_text("".join(json.dumps({"messages": chat}) + "\n" for chat in style_chats()[:12]), encoding="utf-8")
    request = {"adapter": "pier-signoff", "data": [str(data)], "max_steps": 2, "force": True, "rank": 4,
               "gradient_checkpointing": False, "description": "Signs off"}
    started = a.post("/admin/train", json=request)
    assert started.status_code == 202, started.text
    run_id = started.json()["run_id"]

    refused = b.post("/admin/train", json=request)
    assert refused.status_code == 409 and run_id in refused.json()["error"]["message"]
    assert b.get(f"/admin/train/{run_id}").json()["state"] in ("queued", "running")  # B reads A's run

    within(600, lambda: b.get(f"/admin/train/{run_id}").json()["state"] not in ("queued", "running"))
    final = b.get(f"/admin/train/{run_id}").json()
    assert final["state"] == "succeeded", final["error"]
    within(SEEN_WITHIN_S, lambda: b.chat("What colour is grass?", model="pier-signoff").status_code == 200)


def test_a_database_or_chroma_server_that_goes_away_gives_503s_then_recovery_without_restart(cluster, postgres):
    (a, b), chroma, _ = cluster
    postgres.stop()
    try:
        refused = a.chat("Is the database there?")
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
        assert "conversation database" in refused.json()["error"]["message"]
        health = b.get("/health")
        assert health.status_code == 503 and health.json()["parts"]["database"]["status"] == "down"
        assert health.json()["parts"]["knowledge"]["status"] == "ok"
    finally:
        postgres.start()
    within(SEEN_WITHIN_S, lambda: a.chat("And now?").status_code == 200)
    within(SEEN_WITHIN_S, lambda: b.get("/health").status_code == 200)

    chroma.stop()
    try:
        time.sleep(2.5)  # past knowledge.refresh_s: the replica asks the server again
        refused = b.chat("Which pier does the Lindholm ferry leave from?", model="harbour")
        assert refused.status_code == 503 and "Chroma server" in refused.json()["error"]["message"]
        health = a.get("/health")
        assert health.status_code == 503 and health.json()["parts"]["knowledge"]["status"] == "down"
        assert "knowledge: the Chroma server" in health.json()["error"]["message"]
    finally:
        chroma.start()
    within(SEEN_WITHIN_S, lambda: b.chat("Which pier does the Lindholm ferry leave from?", model="harbour").status_code == 200)
    assert all(r.get("/health").status_code == 200 for r in (a, b))
