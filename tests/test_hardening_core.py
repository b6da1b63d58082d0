"""Hardening of the core: bad adapters and sampling values refused cleanly, one failing row ends alone,
clients that go away free their rows, trimming is linear, and interrupted installs leave no debris.

The tables at module level (``BAD_ADAPTERS``, ``TAMPERED_ADAPTERS``, ``BAD_SAMPLING``, ``EDGE_SAMPLING``)
are what ``docs/reliability.md`` counts; each case asserts a clean refusal (or a clean answer) and that the
server still serves afterwards. The ``kill -9`` trials of real processes are in ``test_kill_trials.py``.
"""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from greedy import assert_greedy
from safetensors.torch import load_file, save

from adapters.registry import Registry
from core.errors import BusyError, GenerationError
from core.settings import SchedulerConfig
from engine.decoding import GenerationRequest
from engine.scheduler import Scheduler

LAYER0 = "base_model.model.model.layers.0.self_attn"


# ---- bad adapters: each damage turns a good random LoRA's (config, tensors) into a bad one ----------------


def _config(**changes):
    def damage(config: dict, tensors: dict) -> None:
        config.update(changes)

    return damage


def _set_value(name: str, value: float):
    def damage(config: dict, tensors: dict) -> None:
        tensors[name][0, 0] = value

    return damage


def _replace_tensors(new: dict):
    def damage(config: dict, tensors: dict) -> None:
        tensors.clear()
        tensors.update({k: v.clone() for k, v in new.items()})

    return damage


def _drop(name: str):
    def damage(config: dict, tensors: dict) -> None:
        del tensors[name]

    return damage


def _rename_module(old: str, new: str):
    def damage(config: dict, tensors: dict) -> None:
        for key in [k for k in tensors if old in k]:
            tensors[key.replace(old, new)] = tensors.pop(key)

    return damage


def _add(name: str, shape: tuple[int, ...]):
    def damage(config: dict, tensors: dict) -> None:
        tensors[name] = torch.zeros(shape)

    return damage


# case -> (damage, words the refusal must contain: the file, and the tensor where one is at fault)
BAD_ADAPTERS = {
    "lora_alpha a string": (_config(lora_alpha="16"), ["adapter_config.json", "lora_alpha='16'"]),
    "lora_alpha zero": (_config(lora_alpha=0), ["adapter_config.json", "lora_alpha=0"]),
    "lora_alpha negative": (_config(lora_alpha=-8), ["adapter_config.json", "lora_alpha=-8"]),
    "lora_alpha null": (_config(lora_alpha=None), ["adapter_config.json", "lora_alpha=None"]),
    "r a string": (_config(r="8"), ["adapter_config.json", "r='8'"]),
    "r a boolean": (_config(r=True), ["adapter_config.json", "r=True"]),
    "r a float": (_config(r=8.0), ["adapter_config.json", "r=8.0"]),
    "rank differs from r": (_config(r=4), ["adapter_model.safetensors", f"{LAYER0}.q_proj.lora_A.weight", "r=4"]),
    "rank_pattern differs": (
        _config(rank_pattern={"v_proj": 4}), ["adapter_model.safetensors", f"{LAYER0}.v_proj.lora_A.weight", "r=4"],
    ),
    "rank_pattern a string": (_config(rank_pattern={"v_proj": "8"}), ["adapter_config.json", "rank_pattern"]),
    "rank_pattern bad regex": (_config(rank_pattern={"(": 8}), ["adapter_config.json", "not a valid regular expression"]),
    "alpha_pattern a string": (_config(alpha_pattern={"q_proj": "16"}), ["adapter_config.json", "alpha_pattern"]),
    "NaN factor": (
        _set_value(f"{LAYER0}.q_proj.lora_B.weight", math.nan),
        ["adapter_model.safetensors", f"{LAYER0}.q_proj.lora_B.weight", "NaN"],
    ),
    "infinite factor": (
        _set_value(f"{LAYER0}.v_proj.lora_A.weight", -math.inf),
        ["adapter_model.safetensors", f"{LAYER0}.v_proj.lora_A.weight", "infinite"],
    ),
    "no LoRA tensors": (
        _replace_tensors({"model.embed_tokens.weight": torch.zeros(4, 4)}),
        ["adapter_model.safetensors", "model.embed_tokens.weight", "not a LoRA factor"],
    ),
    "no tensors at all": (_replace_tensors({}), ["adapter_model.safetensors", "holds no LoRA factors"]),
    "factor without its pair": (
        _drop(f"{LAYER0}.q_proj.lora_B.weight"), ["adapter_model.safetensors", f"{LAYER0}.q_proj.lora_A.weight", "pair"],
    ),
    "module the base lacks": (
        _rename_module("layers.0.self_attn.q_proj", "layers.0.self_attn.x_proj"),
        ["adapter_model.safetensors", f"{LAYER0}.x_proj.lora_A.weight", "does not have"],
    ),
    "LoRA on an embedding": (
        _add("base_model.model.model.embed_tokens.lora_embedding_A", (8, 49152)),
        ["adapter_model.safetensors", "lora_embedding_A", "not a LoRA factor"],
    ),
    "target_modules a broken regex": (_config(target_modules="("), ["adapter_config.json", "target_modules", "regular expression"]),
    "target_modules a number": (_config(target_modules=5), ["adapter_config.json", "target_modules=5"]),
    "target_modules numbers": (_config(target_modules=[5]), ["adapter_config.json", "target_modules=[5]"]),
    "target_modules an object": (_config(target_modules={"q_proj": 1}), ["adapter_config.json", "target_modules="]),
    "DoRA": (_config(use_dora=True), ["adapter_config.json", "DoRA is not supported"]),
    "config not an object": (lambda c, t: (c.clear(), c.update({"__list__": True})), ["adapter_config.json"]),
}

# The same damage written into an installed version on disk (an older release, or tampering): the adapter is
# disabled at the next start with its reason; the server starts and the good adapters serve.
TAMPERED_ADAPTERS = ["lora_alpha a string", "NaN factor", "rank differs from r", "no LoRA tensors", "target_modules a number"]


def _damaged(folder: Path, case: str) -> tuple[bytes, bytes]:
    config = json.loads((folder / "adapter_config.json").read_text())
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    damage, _ = BAD_ADAPTERS[case]
    damage(config, tensors)
    body = [] if config.get("__list__") else config  # "config not an object": a JSON list
    return json.dumps(body).encode(), save(tensors)


@pytest.fixture(scope="module")
def good_lora(make_random_adapter) -> Path:
    return make_random_adapter(seed=60)


@pytest.fixture(scope="module")
def http(live_server):
    with httpx.Client(base_url=live_server.url, timeout=120) as session:
        yield session


def served(http, **extra) -> httpx.Response:
    """A short chat to the base model: proves the server still answers."""
    body = {"model": "base", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2, **extra}
    return http.post("/v1/chat/completions", json=body)


def assert_no_server_paths(message: str, live_server) -> None:
    for path in (str(live_server.parts.settings.home), "/tmp/", "/work/", "/home/"):
        assert path not in message, message


@pytest.mark.parametrize("case", list(BAD_ADAPTERS))
def test_a_bad_adapter_is_refused_over_http_naming_file_and_tensor(case, http, live_server, good_lora):
    registry = live_server.parts.registry
    names, revision = registry.names(), registry.revision()
    config, weights = _damaged(good_lora, case)
    files = [("files", ("adapter_config.json", config)), ("files", ("adapter_model.safetensors", weights))]
    refused = http.post(
        "/admin/adapters", data={"name": "hardening-bad"}, files=files, headers={"Authorization": f"Bearer {live_server.token}"}
    )
    assert refused.status_code == 422, refused.text
    message = refused.json()["error"]["message"]
    for words in BAD_ADAPTERS[case][1]:
        assert words in message, message
    assert_no_server_paths(message, live_server)
    assert registry.names() == names and registry.revision() == revision
    assert not any((registry.root / ".staging").iterdir())
    assert served(http).status_code == 200


def test_an_adapter_with_a_rank_pattern_installs_and_serves(http, live_server, good_lora, tmp_path):
    """rank_pattern is respected, not refused: v_proj at rank 4 beside q_proj at rank 8."""
    config = json.loads((good_lora / "adapter_config.json").read_text())
    tensors = load_file(str(good_lora / "adapter_model.safetensors"))
    for key in [k for k in tensors if "v_proj" in k]:
        tensors[key] = (tensors[key][:4] if "lora_A" in key else tensors[key][:, :4]).contiguous()
    config["rank_pattern"] = {"v_proj": 4}
    files = [("files", ("adapter_config.json", json.dumps(config).encode())), ("files", ("adapter_model.safetensors", save(tensors)))]
    auth = {"Authorization": f"Bearer {live_server.token}"}
    installed = http.post("/admin/adapters", data={"name": "hardening-pattern"}, files=files, headers=auth)
    assert installed.status_code == 201, installed.text
    try:
        answer = served(http, model="hardening-pattern")
        assert answer.status_code == 200, answer.text
        assert answer.json()["switchboard"]["adapter"] == "hardening-pattern"
    finally:
        assert http.delete("/admin/adapters/hardening-pattern", headers=auth).status_code == 200


def test_installed_adapters_damaged_on_disk_are_disabled_at_start_and_never_break_the_engine(
    good_lora, make_random_adapter, engine, tmp_path
):
    """What start-up runs (``Registry.check_installed`` in ``Parts.warm``): every damaged adapter is disabled
    with its reason and the good one stays; loading a damaged one anyway is that adapter's own clean error."""
    from core.errors import InvalidAdapterError

    fingerprint = engine.fingerprint
    registry = Registry(tmp_path / "adapters", fingerprint)
    registry.install(make_random_adapter(seed=61), "healthy")
    for number, case in enumerate(TAMPERED_ADAPTERS):
        folder = Path(registry.install(good_lora, f"tampered-{number}").path)
        config, weights = _damaged(good_lora, case)
        (folder / "adapter_config.json").write_bytes(config)
        (folder / "adapter_model.safetensors").write_bytes(weights)
    (registry.root / "broken").mkdir()
    (registry.root / "broken" / "state.json").write_text("[not an object")
    reopened = Registry(registry.root, fingerprint)
    tampered = [registry.get(f"tampered-{n}") for n in range(len(TAMPERED_ADAPTERS))]
    failures = reopened.check_installed()
    assert sorted(failures) == [f"tampered-{n}" for n in range(len(TAMPERED_ADAPTERS))]
    for number, case in enumerate(TAMPERED_ADAPTERS):
        assert BAD_ADAPTERS[case][1][0] in failures[f"tampered-{number}"]
        assert reopened.get(f"tampered-{number}").status == "disabled"
        assert json.loads((reopened.root / f"tampered-{number}" / "state.json").read_text())["reason"]
    assert [m.name for m in reopened.list() if m.enabled] == ["healthy"]
    with pytest.raises(InvalidAdapterError):
        reopened.set_status("tampered-0", "enabled")  # enabling checks the files again
    for manifest in tampered:
        key = engine.ensure(manifest)
        with pytest.raises(InvalidAdapterError) as refused:
            engine.activate([key])
        assert str(tmp_path) not in str(refused.value)
        engine.unload_adapter(key)
    assert engine.generate([{"role": "user", "content": "Say hi."}], options=engine.default_options(max_new_tokens=2)).text


# ---- sampling values: refused where the math breaks, served right up to it -----------------------------------

# request fields -> words of the 400 the chat API answers
BAD_SAMPLING = [
    ({"temperature": -0.5}, "temperature"),
    ({"temperature": 5.01}, "temperature"),
    ({"temperature": 1e308 * 10}, "Infinity"),  # JSON's Infinity: refused as JSON, before any field is read
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": -1}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 8193}, "max_tokens"),
    ({"max_tokens": 10**30}, "max_tokens"),
    ({"max_completion_tokens": -1}, "max_completion_tokens"),
    ({"seed": 2**64}, "seed"),
    ({"seed": -(2**63) - 1}, "seed"),
    ({"seed": 10**30}, "seed"),
    ({"stop": ["x"] * 17}, "stop"),
    ({"temperature": "hot"}, "temperature"),
]

# request fields a chat must answer (200) although they sit at the edge of the arithmetic
EDGE_SAMPLING = [
    {"temperature": 1e-300},  # logits / 1e-300 overflowed to inf - inf = NaN and failed the whole batch
    {"temperature": 5e-324},
    {"temperature": 1e-5, "seed": 1},
    {"temperature": 5.0, "top_p": 1e-9, "seed": 2},
    {"temperature": 1.0, "top_p": 1e-300, "seed": 3},
    {"temperature": 0.7, "seed": 2**64 - 1},
    {"temperature": 0.7, "seed": -(2**63)},
    {"temperature": 5.0, "seed": 4},
    {"stop": ["x"] * 16},
]


@pytest.mark.parametrize(("fields", "words"), BAD_SAMPLING, ids=[json.dumps(f)[:40] for f, _ in BAD_SAMPLING])
def test_bad_sampling_values_get_a_clear_400(fields, words, http):
    body = {"model": "base", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2, **fields}
    refused = http.post("/v1/chat/completions", content=json.dumps(body), headers={"content-type": "application/json"})
    assert refused.status_code == 400, refused.text
    assert words in refused.json()["error"]["message"]
    assert served(http).status_code == 200


@pytest.mark.parametrize("fields", EDGE_SAMPLING, ids=[json.dumps(f)[:40] for f in EDGE_SAMPLING])
def test_sampling_values_at_the_edge_are_answered_beside_other_requests(fields, http):
    from concurrent.futures import ThreadPoolExecutor

    body = {"model": "base", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 3, **fields}
    with ThreadPoolExecutor(3) as pool:  # the edge request shares its batch with two plain ones
        answers = list(pool.map(lambda b: http.post("/v1/chat/completions", json=b), [body, *[
            {"model": "base", "messages": [{"role": "user", "content": f"Count to {n}."}], "max_tokens": 3} for n in (2, 3)
        ]]))
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]


# ---- failure isolation in the engine ------------------------------------------------------------------------


@pytest.fixture
def scheduler(engine):
    started = Scheduler(engine, SchedulerConfig()).start()
    yield started
    started.stop()


def test_a_row_that_fails_ends_alone_and_the_batch_goes_on(engine, scheduler):
    """A row that fails after its token is chosen (options that slipped past validation: a stop "string" that
    is a number) gets its own clean error; the rows decoded beside it decode greedily as they would alone."""
    prompts = [[{"role": "user", "content": f"Name {n} colours."}] for n in (2, 3, 4)]
    greedy = engine.default_options(max_new_tokens=6)
    poisoned = type(greedy).model_construct(**{**greedy.model_dump(), "stop": [5]})
    with scheduler._wake:  # the worker admits all four together, into one batch
        tickets = [scheduler.submit(GenerationRequest(p, None, greedy)) for p in prompts[:2]]
        bad = scheduler.submit(GenerationRequest(prompts[0], None, poisoned))
        tickets.append(scheduler.submit(GenerationRequest(prompts[2], None, greedy)))
    with pytest.raises(GenerationError, match="other requests are unaffected"):
        bad.result(timeout=120)
    for prompt, ticket in zip(prompts, tickets):
        generation = ticket.result(timeout=120)
        assert generation.finish_reason in ("stop", "length") and generation.token_ids
        assert_greedy(engine, prompt, None, generation, greedy.repetition_penalty)
    assert scheduler.alive and scheduler.submit(GenerationRequest(prompts[0], None, greedy)).result(timeout=120).text


def test_a_stopped_scheduler_fails_health_and_refuses_every_request_at_once(live_server, engine):
    """A worker that is gone never leaves a request waiting: /health says 503 and chats get 503 with Retry-After."""
    from starlette.testclient import TestClient

    from bot.api.app import create_app
    from bot.parts import Parts

    source = live_server.parts
    parts = Parts(source.settings)
    for part in ("engine", "registry", "encoder", "knowledge", "log", "router", "fingerprint"):
        if part in source.__dict__:
            parts.__dict__[part] = source.__dict__[part]
    stopped = Scheduler(engine, SchedulerConfig()).start()
    stopped.stop()
    parts.__dict__["scheduler"] = stopped
    assert not stopped.alive
    with pytest.raises(BusyError):
        stopped.submit(GenerationRequest([{"role": "user", "content": "hi"}], None, engine.default_options()))
    with TestClient(create_app(parts, ui=False)) as client:
        assert client.get("/health").status_code == 503
        refused = client.post("/v1/chat/completions", json={"model": "base", "messages": [{"role": "user", "content": "hi"}]})
        assert refused.status_code == 503 and refused.headers["retry-after"]


# ---- cancellation: a client that goes away frees its row ------------------------------------------------------

LONG = {"model": "base", "max_tokens": 512, "ignore_eos": True}


def logged_answers(live_server) -> int:
    with sqlite3.connect(live_server.parts.settings.conversations_db) as db:
        return db.execute("SELECT COUNT(*) FROM messages WHERE role = 'assistant'").fetchone()[0]


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_dropped_streams_and_requests_free_their_rows_and_the_next_request_is_served(live_server, http):
    scheduler = live_server.parts.scheduler
    before = logged_answers(live_server)
    opened = threading.Barrier(5)

    def drop_a_stream(n: int) -> None:
        body = {**LONG, "stream": True, "messages": [{"role": "user", "content": f"Tell a long story number {n}."}]}
        with httpx.Client(base_url=live_server.url, timeout=120) as client, client.stream(
            "POST", "/v1/chat/completions", json=body
        ) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            while not next(lines).startswith("data: {"):
                pass
            opened.wait(timeout=120)
        # leaving the block closes the connection mid-answer

    threads = [threading.Thread(target=drop_a_stream, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    opened.wait(timeout=120)
    for thread in threads:
        thread.join(timeout=60)
    assert wait_for(lambda: scheduler.running == 0 and scheduler.queued == 0, 10), (scheduler.running, scheduler.queued)

    def drop_a_request() -> None:
        body = {**LONG, "messages": [{"role": "user", "content": "Tell a very long story."}]}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{live_server.url}/v1/chat/completions", json=body, timeout=httpx.Timeout(60, read=3))

    dropper = threading.Thread(target=drop_a_request)
    dropper.start()
    assert wait_for(lambda: scheduler.running == 1, 60)
    dropper.join(timeout=60)
    assert wait_for(lambda: scheduler.running == 0 and scheduler.queued == 0, 5), scheduler.running
    answer = http.post(
        "/v1/chat/completions", json={"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
        timeout=30,
    )
    assert answer.status_code == 200
    assert logged_answers(live_server) == before + 1  # the abandoned turns were not logged as answers


# ---- history trimming is linear ------------------------------------------------------------------------------


def test_a_huge_history_is_trimmed_keeping_the_most_that_fits(live_server):
    """3,200 messages took 370 s when each dropped pair re-rendered the prompt; bench/trimming.py measures the
    linear trim (0.41 s), this test what it keeps."""
    from bot.turn import TurnRequest
    from knowledge.prompt import build_messages

    parts = live_server.parts
    engine, pipeline = parts.engine, parts.pipeline
    history = []
    for n in range(1600):  # 3,200 messages, about 290 KB: minutes when each dropped pair re-rendered the prompt
        history += [{"role": "user", "content": f"Question {n}: what about item {n * 7}?" + " filler" * 5},
                    {"role": "assistant", "content": f"Answer {n}: item {n * 7} is fine." + " more" * 5}]
    turn = pipeline.prepare(TurnRequest("Summarise our chat.", adapter="base", history=history))
    kept = turn.messages[1:-1]
    assert kept and kept == history[len(history) - len(kept):]  # the newest messages stay, whole pairs
    room = engine.context_window - min(turn.options.max_new_tokens, engine.context_window // 2)
    assert len(engine.render(turn.messages)) <= room
    one_more = history[len(history) - len(kept) - 2:]
    assert len(engine.render(build_messages("Summarise our chat.", [], turn.system_prompt, one_more))) > room


# ---- interrupted installs: debris is cleaned and never a rollback target -----------------------------------------


def test_debris_of_interrupted_installs_is_removed_at_open_and_never_rolled_back_to(engine, good_lora, tmp_path):
    root = tmp_path / "adapters"
    registry = Registry(root, engine.fingerprint)
    registry.install(good_lora, "kept")
    registry.install(good_lora, "kept")
    assert registry.rollback("kept").version == 1  # a rolled-back version is installed: it stays
    shutil.copytree(root / "kept" / "v2", root / "kept" / "v3")  # renamed into place, never committed
    (root / "fresh" / "v1").mkdir(parents=True)  # a first install killed before its state.json
    shutil.copy(good_lora / "adapter_config.json", root / "fresh" / "v1")
    stage = root / ".staging" / "999999999-kept-abc"  # a killed process's staging folder, weights half written
    stage.mkdir(parents=True)
    (stage / "adapter_model.safetensors").write_bytes(b"\x00" * 100)
    (root / ".staging" / "kept-legacy").mkdir()  # staging of an older release (no owner in its name)
    live = root / ".staging" / f"{__import__('os').getpid()}-other-xyz"  # this process is alive: left alone
    live.mkdir()

    reopened = Registry(root, engine.fingerprint)
    assert sorted(p.name for p in (root / ".staging").iterdir()) == [live.name]
    assert not (root / "kept" / "v3").exists() and not (root / "fresh").exists()
    assert [m.version for m in reopened.versions("kept")] == [1, 2]
    reopened.set_status("kept", "enabled")
    assert reopened.install(good_lora, "kept").version == 3
    assert reopened.rollback("kept").version == 2
    assert reopened.rollback("kept").version == 1


def test_a_loop_failure_fails_what_is_in_flight_and_the_worker_goes_on(engine, scheduler):
    """A fault outside any step (here a request whose cancel flag is not an event) fails the requests in
    flight with a clear error, never hangs them, and the worker serves the next request."""
    greedy = engine.default_options(max_new_tokens=3)
    prompt = [{"role": "user", "content": "Say hi."}]
    faulty = scheduler.submit(GenerationRequest(prompt, None, greedy, cancel=object()))
    with pytest.raises(GenerationError, match="AttributeError"):
        faulty.result(timeout=120)
    assert scheduler.alive and scheduler.restarts >= 1
    assert scheduler.submit(GenerationRequest(prompt, None, greedy)).result(timeout=120).text


def test_a_draw_over_non_finite_scores_fails_its_row_alone():
    """Scores a broken pass left NaN fail the sampling row that draws from them; the other rows keep their token."""
    from engine.sampling import GenerationOptions, RowSampler, choose_tokens

    cpu = torch.device("cpu")
    logits = torch.randn(3, 50)
    logits[1, 7] = math.nan
    samplers = [RowSampler(GenerationOptions(temperature=t, seed=1), cpu) for t in (0.0, 1.0, 0.8)]
    chosen = choose_tokens(logits, samplers, [[], [], []])
    assert chosen[0] == int(logits[0].argmax()) and isinstance(chosen[2], int)
    assert isinstance(chosen[1], FloatingPointError)
    tiny = RowSampler(GenerationOptions(temperature=1.0, top_p=1e-300, seed=1), cpu)  # 1e-300 is 0 in float32
    assert choose_tokens(logits[:1], [tiny], [[]]) == [int(logits[0].argmax())]
