"""Switchboard on a real vLLM server (the CPU build of vLLM 0.32 in ``.venv-vllm``; see the README's "Scale out").

The same product in front, tokens from vLLM behind: the answers are the
embedded engine's, token for token, on a float32 base; every adapter change
reaches the server; a server that restarts or goes away is survived; what a
request carries passes through; a client that goes away stops its request
in the server. A training run's deploy served through vLLM is in
tests/test_replicas.py, whose replicas generate on this server.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from bot.parts import Parts
from bot.turn import TurnRequest
from core.sections import EngineConfig
from tests.conftest import CHAT_ADMIN_TOKEN, STYLE_SIGN_OFF, install_demo

pytestmark = pytest.mark.slow  # a vLLM server loads for about a minute, and is killed and restarted once

ADMIN = {"Authorization": f"Bearer {CHAT_ADMIN_TOKEN}"}
QUESTIONS = {
    "support": "How long is the warranty on a laptop?",
    "legal": "Can I withdraw from a contract I signed online?",
    "signoff": "What colour is a lemon?",
    "base": "Name three fruits.",
}
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def vllm_parts(make_settings, make_random_adapter, style_adapter, vllm_server, tmp_path_factory):
    """Switchboard driving the vLLM server: the demo adapters (random weights), a trained style adapter, documents."""
    home = tmp_path_factory.mktemp("vllm-home")
    settings = make_settings(
        home,
        admin_token=CHAT_ADMIN_TOKEN,
        generation={"max_new_tokens": MAX_TOKENS},
        engine={"backend": "vllm", "url": vllm_server.url},
    )
    parts = Parts(settings)
    install_demo(parts, make_random_adapter)
    parts.registry.install(style_adapter, "signoff", description="Signs off every answer", examples=["What colour is it?"])
    parts.warm()
    yield parts
    parts.scheduler.stop()
    parts.knowledge.close()


@pytest.fixture(scope="module")
def app(vllm_parts):
    from bot.api.app import create_app
    from bot.api.server import serving

    with serving(create_app(vllm_parts)) as url:
        yield url


@pytest.fixture(scope="module")
def embedded(vllm_parts):
    """The embedded engine on the same home, its base in float32: the reference every vLLM answer must equal."""
    settings = vllm_parts.settings.model_copy(update={"quantization": "none", "engine": EngineConfig()})
    parts = Parts(settings, read_only_knowledge=True)
    yield parts
    parts.scheduler.stop()
    parts.knowledge.close()


def chat(url: str, model: str, message: str, **options) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": message}], "max_tokens": MAX_TOKENS, **options}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)


def served(server) -> set[str]:
    """What the vLLM server holds now, asked of the server itself."""
    return {m["id"] for m in httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"]}


def wait_until(condition, seconds: float = 10.0) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, "the condition did not hold in time"
        time.sleep(0.02)
    return time.monotonic() - started


# ---- the same answers


@pytest.mark.parametrize("model", list(QUESTIONS))
def test_a_chat_on_vllm_gives_the_embedded_engines_greedy_answer(app, vllm_parts, embedded, model):
    response = chat(app, model, QUESTIONS[model])
    assert response.status_code == 200, response.text
    body = response.json()
    reference = embedded.pipeline.answer(TurnRequest(message=QUESTIONS[model], adapter=model))
    assert body["switchboard"]["adapter"] == (None if model == "base" else model)
    assert body["choices"][0]["message"]["content"] == reference.answer
    ended = reference.finish_reason == "stop"  # vLLM counts the end-of-turn token, the embedded engine does not
    assert body["usage"]["completion_tokens"] == reference.completion_tokens + ended > ended
    assert body["usage"]["prompt_tokens"] == reference.prompt_tokens  # vLLM counted the prompt Switchboard rendered
    if model == "signoff":  # the trained style reached the answer through vLLM's LoRA kernels
        assert STYLE_SIGN_OFF in body["choices"][0]["message"]["content"]


def test_the_engines_usage_counts_are_logged(app, vllm_parts):
    body = chat(app, "legal", QUESTIONS["legal"], max_tokens=5, ignore_eos=True).json()
    turn = next(t for t in vllm_parts.log.turns(adapter="legal") if t.message_id == body["switchboard"]["message_id"])
    assert (turn.prompt_tokens, turn.completion_tokens) == (body["usage"]["prompt_tokens"], 5)


# ---- what a request carries


def test_max_tokens_ignore_eos_stop_seed_temperature_and_penalty_pass_through(app, embedded):
    long = chat(app, "base", "Say hi.", max_tokens=40, ignore_eos=True).json()
    assert long["usage"]["completion_tokens"] == 40 and long["choices"][0]["finish_reason"] == "length"
    first = long["choices"][0]["message"]["content"]
    word = re.findall(r"[A-Za-z]{4,}", first)[1]
    stopped = chat(app, "base", "Say hi.", max_tokens=40, ignore_eos=True, stop=[word]).json()
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["choices"][0]["message"]["content"] == first[: first.index(word)].strip()
    sampled = [chat(app, "base", "Tell me a story.", temperature=1.0, seed=seed).json() for seed in (7, 7, 8)]
    texts = [s["choices"][0]["message"]["content"] for s in sampled]
    assert texts[0] == texts[1] != texts[2]  # the seed reaches the server's sampler
    for penalty in (1.0, 2.0):
        got = chat(app, "base", QUESTIONS["base"], repetition_penalty=penalty).json()["choices"][0]["message"]["content"]
        want = embedded.pipeline.answer(TurnRequest(message=QUESTIONS["base"], adapter="base", options={"repetition_penalty": penalty}))
        assert got == want.answer, penalty  # the answer-only penalty runs inside vLLM (engine.vllm.answer_penalty)


def test_eight_concurrent_streams_over_three_adapters_do_not_mix(app):
    models = ["support", "legal", "signoff"]
    alone = {m: chat(app, m, QUESTIONS[m]).json()["choices"][0]["message"]["content"] for m in models}

    def stream(i: int) -> tuple[str, str]:
        model = models[i % 3]
        body = {"model": model, "messages": [{"role": "user", "content": QUESTIONS[model]}], "max_tokens": MAX_TOKENS, "stream": True}
        text = []
        with httpx.stream("POST", f"{app}/v1/chat/completions", json=body, timeout=300) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    delta = httpx.Response(200, content=line[6:]).json()["choices"][0]["delta"]
                    text.append(delta.get("content") or "")
        return model, "".join(text)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(stream, range(8)))
    assert [text for _, text in results] == [alone[model] for model, _ in results]


def test_a_client_that_goes_away_aborts_the_request_in_vllm(app, vllm_server):
    body = {"model": "base", "messages": [{"role": "user", "content": "Count."}], "max_tokens": 1500, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{app}/v1/chat/completions", json=body, timeout=300) as response:
        next(response.iter_lines())  # the answer has started
        # vLLM hands a step's tokens to the streams before it records that step's gauges: wait for the count.
        wait_until(lambda: running(vllm_server) == 1, seconds=5)
    wait_until(lambda: running(vllm_server) == 0, seconds=5)


def running(server) -> float:
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(r"^vllm:num_requests_running\{[^}]*\} (\S+)$", metrics, re.M))


# ---- adapters live in vLLM as in the registry


def test_install_rollback_and_remove_reach_the_server(app, vllm_parts, vllm_server, make_random_adapter):
    folder = make_random_adapter(41)
    files = [("files", (p.name, p.read_bytes())) for p in sorted(folder.iterdir())]
    keys = []
    for _ in range(2):
        installed = httpx.post(f"{app}/admin/adapters", headers=ADMIN, data={"name": "pricing"}, files=files, timeout=60)
        assert installed.status_code == 201, installed.text
        keys.append(vllm_parts.registry.get("pricing").key)
        assert keys[-1] in served(vllm_server)  # loaded before any request asks for it
    answer = chat(app, "pricing", "How much is it?").json()
    assert answer["switchboard"]["adapter_version"] == 2
    wait_until(lambda: keys[0] not in served(vllm_server))  # the old version left once nothing used it

    started = time.monotonic()
    rolled = httpx.post(f"{app}/admin/adapters/pricing/rollback", headers=ADMIN, timeout=60)
    assert rolled.status_code == 200 and rolled.json()["version"] == 1
    wait_until(lambda: keys[0] in served(vllm_server) and keys[1] not in served(vllm_server), seconds=2)
    assert time.monotonic() - started < 2.0  # a rollback reaches the engine in under 2 s
    assert chat(app, "pricing", "How much is it?").json()["switchboard"]["adapter_version"] == 1

    assert httpx.delete(f"{app}/admin/adapters/pricing", headers=ADMIN, timeout=60).status_code == 200
    wait_until(lambda: not any(k.startswith("pricing__") for k in served(vllm_server)))


# ---- a server that restarts or goes away


def test_vllm_down_gives_503_then_a_restart_is_repaired_with_no_lost_turn(app, vllm_parts, vllm_server):
    keys = {vllm_parts.registry.get(name).key for name in ("support", "legal", "signoff")}
    assert keys <= served(vllm_server)
    logged = vllm_parts.log.count_messages()
    vllm_server.kill()
    down = chat(app, "support", QUESTIONS["support"])
    assert down.status_code == 503 and int(down.headers["Retry-After"]) >= 1
    assert "vLLM server" in down.json()["error"]["message"]
    assert vllm_parts.log.count_messages() == logged  # a failed turn leaves nothing in the log
    health = httpx.get(f"{app}/health", timeout=10)
    assert health.status_code == 503 and int(health.headers["Retry-After"]) >= 1
    assert health.json()["parts"]["engine"]["status"] == "down"
    assert health.json()["error"]["message"].startswith("a part is down: engine: ")
    assert health.json()["parts"]["database"]["status"] == "ok"

    vllm_server.start().wait()
    assert httpx.get(f"{app}/health", timeout=10).json()["parts"]["engine"]["status"] == "ok"
    assert not keys & served(vllm_server)  # a restarted server has lost every adapter
    back = chat(app, "support", QUESTIONS["support"])
    assert back.status_code == 200, back.text  # noticed, repaired, retried once
    assert keys <= served(vllm_server)
    assert vllm_parts.log.count_messages() == logged + 2
