"""The scheduler: continuous batching across adapters, per-caller streams, cancellation, back-pressure, residency."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from greedy import assert_greedy

from core.errors import BusyError, InvalidRequestError
from core.settings import SchedulerConfig
from engine.decoding import GenerationRequest
from engine.scheduler import Scheduler

ROOT = Path(__file__).resolve().parents[1]

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Give me one tip for a long hike."}],
    [{"role": "user", "content": "How do I return a tent I bought online?"}],
    [{"role": "user", "content": "Name a colour of the rainbow."}],
]


@pytest.fixture(scope="module")
def adapters(engine, make_random_adapter):
    """Three resident random LoRAs; unloaded after the module so the session engine stays clean."""
    folders = {f"sched_{name}__v1": make_random_adapter(seed=seed) for name, seed in (("a", 40), ("b", 41), ("c", 42))}
    for key, folder in folders.items():
        engine.load_adapter(key, folder)
    yield list(folders)
    for key in folders:
        engine.unload_adapter(key)


@pytest.fixture
def make_scheduler(engine):
    started: list[Scheduler] = []

    def make(**config) -> Scheduler:
        scheduler = Scheduler(engine, SchedulerConfig(**config)).start()
        started.append(scheduler)
        return scheduler

    yield make
    for scheduler in started:
        scheduler.stop()


def options(engine, tokens: int, **overrides):
    return engine.default_options(max_new_tokens=tokens, repetition_penalty=1.2, **overrides)


def first_piece(ticket) -> str:
    """Block until the request is decoding (its first text arrived)."""
    return next(iter(ticket))


def test_rows_joining_and_leaving_a_running_batch_match_their_solo_output(engine, adapters, make_scheduler):
    scheduler = make_scheduler(max_batch_size=4)
    jobs = [
        (PROMPTS[0], adapters[0], options(engine, 24)),
        (PROMPTS[1], None, options(engine, 6)),
        (PROMPTS[2], adapters[1], options(engine, 14)),
        (PROMPTS[3], adapters[0], options(engine, 10, stop=["."])),
    ]
    solo = [engine.generate(prompt, adapter, opts) for prompt, adapter, opts in jobs]

    first = scheduler.submit(GenerationRequest(*jobs[0]))
    pieces = [[first_piece(first)]]  # the long row is decoding: the others join its batch, then leave before it
    later = [scheduler.submit(GenerationRequest(*job)) for job in jobs[1:]]
    tickets = [first, *later]
    for ticket in later:
        pieces.append(list(ticket))
    pieces[0].extend(first)
    results = [t.result() for t in tickets]

    for (prompt, adapter, opts), result in zip(jobs, results):
        assert_greedy(engine, prompt, adapter, result, opts.repetition_penalty)
    assert sum(r.token_ids == g.token_ids for r, g in zip(results, solo)) >= 2  # most rows match exactly
    assert ["".join(p).strip() for p in pieces] == [r.text for r in results]  # each stream is its own text
    assert results[1].completion_tokens == 6 and results[1].finish_reason == "length"
    assert "." not in results[3].text
    assert all(t.started_at < first.finished_at for t in later)  # they ran in the same batch as the first
    assert first.first_token_at < min(t.started_at for t in later)


def with_system(system: str, prompt: list[dict]) -> list[dict]:
    return [{"role": "system", "content": system}, *prompt]


def test_rows_prefill_after_their_cached_system_prompt_and_match_a_full_pass(engine, adapters, make_scheduler):
    captain, french = "Answer as a ship's captain would, in one sentence.", "Reply in French."
    jobs = [
        (with_system(captain, PROMPTS[0]), adapters[0]),
        (with_system(captain, PROMPTS[1]), adapters[0]),  # same system prompt and adapter: the same cached prefix
        (with_system(captain, PROMPTS[2]), None),  # the base computes other keys and values: a prefix of its own
        (with_system(french, PROMPTS[3]), adapters[1]),
        (PROMPTS[3], adapters[2]),  # no system prompt: the template's default system block is the prefix
    ]
    cache = engine.prefixes
    cache.drop(adapters[2])  # whatever ran before, its default prefix is computed here
    entries, hits, misses = len(cache), cache.hits, cache.misses
    scheduler = make_scheduler(max_batch_size=8)
    tickets = [scheduler.submit(GenerationRequest(messages, adapter, options(engine, 12))) for messages, adapter in jobs]
    results = [ticket.result() for ticket in tickets]

    for (messages, adapter), result in zip(jobs, results):  # each checked against one pass over its whole prompt
        assert_greedy(engine, messages, adapter, result, 1.2)
    assert (len(cache) - entries, cache.misses - misses, cache.hits - hits) == (4, 4, 1)
    assert all(engine.new_row(GenerationRequest(m, a, options(engine, 1))).prefix_length > 0 for m, a in jobs)
    # Cold or warm, a prefix gives the same answer: a new system prompt, asked twice alone.
    fresh = with_system("Answer in the voice of a librarian.", PROMPTS[1])
    cold, warm = (engine.generate(fresh, adapters[2], options(engine, 12)) for _ in range(2))
    assert cold.token_ids == warm.token_ids
    assert cache.hits - hits == 2


def test_unloading_an_adapter_forgets_its_cached_prefixes(engine, make_random_adapter):
    engine.load_adapter("prefix_owner__v1", make_random_adapter(seed=44))
    cache = engine.prefixes
    before = len(cache)
    engine.generate(with_system("Be terse.", PROMPTS[0]), "prefix_owner__v1", options(engine, 2))
    assert len(cache) == before + 1
    engine.unload_adapter("prefix_owner__v1")
    assert len(cache) == before


def test_per_row_options_in_one_batch(engine, make_scheduler):
    scheduler = make_scheduler(max_batch_size=6)
    sampled = options(engine, 10, temperature=1.0, top_p=0.9, seed=7)
    requests = [
        GenerationRequest(PROMPTS[3], None, sampled),
        GenerationRequest(PROMPTS[3], None, sampled),  # same seed: if rows shared a generator these would differ
        *(GenerationRequest(PROMPTS[3], None, sampled.model_copy(update={"seed": s})) for s in (8, 9, 10)),
        GenerationRequest(PROMPTS[0], None, options(engine, 3)),
    ]
    with scheduler._wake:  # the worker admits nothing until all six wait, so they are prefilled as one group
        tickets = [scheduler.submit(r) for r in requests]
    results = [t.result() for t in tickets]
    assert results[0].text == results[1].text
    assert len({r.text for r in results[:5]}) > 1
    assert results[5].completion_tokens == 3 and results[5].finish_reason == "length"


def test_cancel_frees_the_row_for_a_waiting_request(engine, make_scheduler):
    scheduler = make_scheduler(max_batch_size=2)
    long = options(engine, 40, ignore_eos=True)
    doomed = scheduler.submit(GenerationRequest(PROMPTS[0], None, long))
    other = scheduler.submit(GenerationRequest(PROMPTS[1], None, long))
    first_piece(doomed)
    first_piece(other)
    waiting = scheduler.submit(GenerationRequest(PROMPTS[2], None, options(engine, 4)))
    withdrawn = scheduler.submit(GenerationRequest(PROMPTS[3], None, options(engine, 4)))
    assert scheduler.queued == 2  # the batch is full

    withdrawn.cancel()
    assert withdrawn.result(timeout=5).finish_reason == "cancelled" and scheduler.queued == 1
    doomed.cancel()
    cancelled = doomed.result(timeout=60)
    assert cancelled.finish_reason == "cancelled" and cancelled.completion_tokens < 40
    assert waiting.result(timeout=60).completion_tokens == 4
    assert other.result(timeout=120).completion_tokens == 40
    assert waiting.finished_at < other.finished_at  # it took the cancelled row's place, not the end of the batch
    assert scheduler.running == 0


def test_a_full_queue_answers_busy_with_retry_after(engine, make_scheduler):
    scheduler = make_scheduler(max_batch_size=1, max_queue=2)
    long = options(engine, 60, ignore_eos=True)
    running = scheduler.submit(GenerationRequest(PROMPTS[0], None, long))
    first_piece(running)
    queued = [scheduler.submit(GenerationRequest(PROMPTS[1], None, long)) for _ in range(2)]
    with pytest.raises(BusyError) as refused:
        scheduler.submit(GenerationRequest(PROMPTS[2], None, long))
    assert refused.value.status_code == 503 and refused.value.retry_after >= 1
    for ticket in [running, *queued]:
        ticket.cancel()
    assert all(t.result(timeout=60).finish_reason == "cancelled" for t in [running, *queued])
    scheduler.stop()
    with pytest.raises(BusyError):
        scheduler.submit(GenerationRequest(PROMPTS[2], None, long))


def test_bad_requests_fail_in_the_callers_thread(engine, make_scheduler):
    scheduler = make_scheduler()
    with pytest.raises(InvalidRequestError, match="not loaded"):
        scheduler.submit(GenerationRequest(PROMPTS[0], "never_loaded__v1", options(engine, 4)))
    huge = [{"role": "user", "content": "word " * (engine.context_window + 10)}]
    with pytest.raises(InvalidRequestError, match="context window"):
        scheduler.submit(GenerationRequest(huge, None, options(engine, 4)))
    assert scheduler.queued == 0


def test_lru_residency_limit_holds_and_evicted_adapters_reload(engine, adapters, make_scheduler):
    opts = options(engine, 6)
    jobs = [(PROMPTS[i], adapters[i % 3]) for i in range(4)]
    limit = engine.settings.max_resident_adapters
    engine.settings.max_resident_adapters = 2
    try:
        engine.activate([adapters[0], adapters[1]])  # evicts the third
        assert adapters[2] not in engine.resident_adapters
        loads = len(engine.adapter_load_seconds)
        resident_seen: list[int] = []

        def watch(_: str) -> None:  # called by the worker whenever a row streams text
            resident_seen.append(len(engine.resident_adapters))

        scheduler = make_scheduler(max_batch_size=4)
        tickets = [scheduler.submit(GenerationRequest(p, adapter, opts, on_text=watch)) for p, adapter in jobs]
        results = [t.result(timeout=120) for t in tickets]  # before any reference pass loads an adapter itself
        assert len(engine.adapter_load_seconds) > loads  # the evicted adapter was reloaded on demand
        assert resident_seen and max(resident_seen) <= 2
        assert len(engine.resident_adapters) <= 2
        for (prompt, adapter), result in zip(jobs, results):
            assert_greedy(engine, prompt, adapter, result, opts.repetition_penalty)
    finally:
        engine.settings.max_resident_adapters = limit
        engine.activate(adapters)


def test_batching_off_runs_one_request_at_a_time(engine, make_scheduler):
    scheduler = make_scheduler(batching=False)
    tickets = [scheduler.submit(GenerationRequest(p, None, options(engine, 4))) for p in PROMPTS[:3]]
    for ticket in tickets:
        ticket.result(timeout=60)
    spans = sorted((t.started_at, t.finished_at) for t in tickets)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))


def test_callers_in_many_threads(engine, adapters, make_scheduler):
    """Concurrent callers (as the HTTP server's threads are) each get their own answer."""
    scheduler = make_scheduler(max_batch_size=8)
    opts = options(engine, 8)
    jobs = [(PROMPTS[i % 4], [None, *adapters][i % 4]) for i in range(8)]
    results: dict[int, object] = {}

    def call(i: int) -> None:
        prompt, adapter = jobs[i]
        results[i] = scheduler.generate(GenerationRequest(prompt, adapter, opts))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == len(jobs)
    for i, (prompt, adapter) in enumerate(jobs):
        assert_greedy(engine, prompt, adapter, results[i], opts.repetition_penalty)
    assert len({results[i].text for i in range(4)}) == 4


def test_a_serving_process_keeps_its_main_thread_small_and_the_gil_turns_short():
    code = (
        "import sys, torch; from engine.threads import GIL_SWITCH_SECONDS, reserve_for_workers; reserve_for_workers(); "
        "print(torch.get_num_threads(), sys.getswitchinterval() == GIL_SWITCH_SECONDS < 0.005)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.stdout.split() == ["1", "True"], done.stderr[-1000:]


def test_the_decoding_thread_takes_the_configured_cores(make_scheduler, engine):
    """engine.threads: a serving process keeps its main thread to one torch thread; the scheduler's takes the cores."""
    import os

    seen = []
    for threads in (1, None):
        scheduler = make_scheduler(threads=threads)
        record = lambda _: seen.append(torch.get_num_threads())  # noqa: E731 - on_text runs in the decoding thread
        scheduler.generate(GenerationRequest(PROMPTS[0], None, options(engine, 2), on_text=record))
    assert seen[0] == 1 and seen[-1] == len(os.sched_getaffinity(0))
