"""The engine: one 4-bit base, many adapters, batched and concurrent generation."""

from __future__ import annotations

import threading

import pytest
import torch
from greedy import assert_greedy

from core.errors import InvalidRequestError
from engine.decoding import GenerationRequest
from engine.sampling import GenerationOptions, RowSampler, choose_tokens, penalize_repeats

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Give me one tip for a long hike."}],
    [{"role": "user", "content": "How do I return a tent I bought online?"}],
    [{"role": "user", "content": "Name a colour of the rainbow."}],
]


@pytest.fixture(scope="module")
def adapter_folders(make_random_adapter):
    return {"rand_a__v1": make_random_adapter(seed=10), "rand_b__v1": make_random_adapter(seed=11)}


@pytest.fixture
def two_adapters(engine, adapter_folders):
    """Loaded for each test (loading a resident key is free), unloaded after: the session engine stays clean."""
    for key, folder in adapter_folders.items():
        engine.load_adapter(key, folder)
    yield list(adapter_folders)
    for key in adapter_folders:
        engine.unload_adapter(key)


def greedy(engine, tokens=16):
    return engine.default_options(max_new_tokens=tokens, repetition_penalty=1.2)


def test_base_is_4bit_and_footprint_reported(engine):
    import bitsandbytes as bnb

    layers = [m for m in engine.base.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 30 * 7
    assert layers[0].weight.quant_type == "nf4"
    assert 0 < engine.base.footprint_bytes < 0.35 * 538_000_000


def test_the_cpu_output_layer_runs_through_onednn_on_the_tied_weight(engine):
    from engine.output_layer import OneDNNLinear, onednn_usable

    if not onednn_usable():
        pytest.skip("this torch build has no oneDNN")
    model = engine.model
    head = model.get_output_embeddings()
    assert isinstance(head, OneDNNLinear)
    assert head.weight is model.get_input_embeddings().weight  # still tied: no second copy of the vocabulary
    hidden = torch.randn(8, 1, head.in_features)
    with torch.inference_mode():
        fast = head(hidden)
        reference = torch.nn.functional.linear(hidden, head.weight)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-4)
    assert torch.equal(fast.argmax(-1), reference.argmax(-1))
    with torch.enable_grad():  # training backpropagates through the output layer: the ordinary path
        hidden.requires_grad_(True)
        head(hidden).sum().backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0


def test_adapter_changes_answer_and_base_unchanged(engine, two_adapters):
    options = greedy(engine)
    base_before = engine.generate(PROMPTS[0], None, options).text
    adapted = engine.generate(PROMPTS[0], two_adapters[0], options).text
    assert adapted != base_before
    assert engine.generate(PROMPTS[0], None, options).text == base_before


def test_mixed_batch_equals_each_row_alone(engine, two_adapters):
    """Greedy rows of a mixed batch reproduce the rows generated alone.

    Batched and single 4-bit matrix products accumulate in a different order
    on the CPU; through 30 layers that moves a logit by up to a few hundredths,
    so two candidates that tie that closely may be ordered either way, and a row
    that took the other one goes on from a different text. So every token of
    every batched row must be the greedy choice of one pass over its own text
    alone, up to such a tie; a row given the wrong adapter differs by whole
    logits (the random adapters here move them by several).
    """
    adapters = [two_adapters[0], None, two_adapters[1], two_adapters[0]]
    options = greedy(engine, 20)
    alone = [engine.generate(p, a, options) for p, a in zip(PROMPTS, adapters)]
    batch = engine.generate_batch([GenerationRequest(p, a, options) for p, a in zip(PROMPTS, adapters)])
    assert len({g.text for g in alone}) == len(alone)
    for prompt, adapter, mixed in zip(PROMPTS, adapters, batch):
        assert_greedy(engine, prompt, adapter, mixed, options.repetition_penalty)
    assert sum(solo.token_ids == mixed.token_ids for solo, mixed in zip(alone, batch)) >= 2  # most rows match exactly


def test_hot_load_unload_switch_keeps_base(engine, make_random_adapter):
    base_model = engine.base.model
    weight = next(p for n, p in base_model.named_parameters() if "embed_tokens" in n).detach().clone()
    options = greedy(engine)
    base_answer = engine.generate(PROMPTS[1], None, options).text
    engine.load_adapter("hot__v1", make_random_adapter(seed=21))
    engine.load_adapter("hot__v2", make_random_adapter(seed=22))
    one = engine.generate(PROMPTS[1], "hot__v1", options).text
    two = engine.generate(PROMPTS[1], "hot__v2", options).text
    assert one != two
    assert engine.generate(PROMPTS[1], "hot__v1", options).text == one  # switching back is exact
    engine.unload_adapter("hot__v1")
    engine.unload_adapter("hot__v2")
    assert "hot__v1" not in engine.resident_adapters
    assert engine.base.model is base_model
    assert torch.equal(next(p for n, p in base_model.named_parameters() if "embed_tokens" in n), weight)
    assert engine.generate(PROMPTS[1], None, options).text == base_answer
    with pytest.raises(InvalidRequestError, match="not loaded"):
        engine.generate(PROMPTS[1], "hot__v1", options)


def test_lru_eviction(engine, make_random_adapter):
    limit = engine.settings.max_resident_adapters
    engine.settings.max_resident_adapters = 2
    try:
        folder = make_random_adapter(seed=31)
        for key in ("lru_a__v1", "lru_b__v1", "lru_c__v1"):
            engine.load_adapter(key, folder)
        assert "lru_a__v1" not in engine.resident_adapters
        assert {"lru_b__v1", "lru_c__v1"} <= set(engine.resident_adapters)
    finally:
        engine.settings.max_resident_adapters = limit
        for key in ("lru_a__v1", "lru_b__v1", "lru_c__v1"):
            engine.unload_adapter(key)


def test_naming_an_adapter_loads_it_only_when_its_request_runs(engine, make_random_adapter):
    """A caller's ensure() must not load (and so evict) anything: only the decoding side changes residency."""
    from adapters.manifest import Manifest

    manifest = Manifest(name="lazy", version=1, path=str(make_random_adapter(seed=23)))
    loads = len(engine.adapter_load_seconds)
    key = engine.ensure(manifest)
    try:
        assert key == manifest.key and key not in engine.resident_adapters
        assert len(engine.adapter_load_seconds) == loads
        assert engine.generate(PROMPTS[0], key, greedy(engine, 4)).completion_tokens > 0
        assert key in engine.resident_adapters and len(engine.adapter_load_seconds) == loads + 1
    finally:
        engine.unload_adapter(key)


def test_concurrent_callers_get_their_own_adapter(engine, two_adapters):
    options = greedy(engine, 12)
    jobs = [(PROMPTS[i % 2], two_adapters[i % 2]) for i in range(6)]
    expected = {a: engine.generate(p, a, options).text for p, a in jobs[:2]}
    results: dict[int, str] = {}

    def call(i: int) -> None:
        prompt, adapter = jobs[i]
        results[i] = engine.generate(prompt, adapter, options).text

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i] == expected[jobs[i][1]] for i in range(len(jobs)))


def test_streaming_stop_strings_and_max_tokens(engine):
    options = greedy(engine, 30)
    full = engine.generate(PROMPTS[0], None, options)
    pieces: list[str] = []
    engine.generate(PROMPTS[0], None, options, on_text=pieces.append)
    assert len(pieces) > 3 and "".join(pieces).strip() == full.text
    word = full.text.split()[3]
    stopped = engine.generate(PROMPTS[0], None, options.model_copy(update={"stop": [word]}))
    assert word not in stopped.text and full.text.startswith(stopped.text)
    assert stopped.finish_reason == "stop"
    short = engine.generate(PROMPTS[0], None, options.model_copy(update={"max_new_tokens": 5}))
    assert short.completion_tokens == 5 and short.finish_reason == "length"


def test_sampling_is_seeded(engine):
    options = engine.default_options(max_new_tokens=12, temperature=1.0, top_p=0.9)
    first = engine.generate(PROMPTS[3], None, options.model_copy(update={"seed": 7})).text
    again = engine.generate(PROMPTS[3], None, options.model_copy(update={"seed": 7})).text
    others = {engine.generate(PROMPTS[3], None, options.model_copy(update={"seed": s})).text for s in range(8, 12)}
    assert first == again
    assert len(others | {first}) > 1


def test_prompt_over_context_window(engine):
    huge = [{"role": "user", "content": "word " * (engine.context_window + 10)}]
    with pytest.raises(InvalidRequestError, match="context window"):
        engine.generate(huge, None, greedy(engine, 4))


def test_trained_adapter_carries_its_style(engine, style_adapter):
    from conftest import STYLE_HELD_OUT_PROMPTS, STYLE_SIGN_OFF

    marker = STYLE_SIGN_OFF.split()[-1]  # "Switchboard!"
    engine.load_adapter("style__v1", style_adapter)
    try:
        options = greedy(engine, 40)
        prompts = [[{"role": "user", "content": p}] for p in STYLE_HELD_OUT_PROMPTS]
        styled = engine.generate_batch([GenerationRequest(p, "style__v1", options) for p in prompts])
        plain = engine.generate_batch([GenerationRequest(p, None, options) for p in prompts])
    finally:
        engine.unload_adapter("style__v1")
    assert sum(marker in g.text for g in styled) >= len(prompts) - 1
    assert sum(marker in g.text for g in plain) == 0
    assert all(g.finish_reason == "stop" for g in styled)  # the trained end-of-turn token stops generation


def test_the_repetition_penalty_counts_the_answer_not_the_prompt(engine):
    """A penalty on prompt tokens would push answers away from quoting their sources and from stopping."""
    quote = [{"role": "user", "content": "Repeat exactly: Backpacks are covered for 3 years."}]
    plain = engine.generate(quote, None, engine.default_options(max_new_tokens=1, repetition_penalty=1.0))
    penalised = engine.generate(quote, None, engine.default_options(max_new_tokens=1, repetition_penalty=3.0))
    assert penalised.token_ids == plain.token_ids  # nothing generated yet: nothing to penalise
    logits = torch.tensor([2.0, 1.0, -1.0])
    assert penalize_repeats(logits, torch.tensor([0, 2]), 2.0).tolist() == [1.0, 1.0, -2.0]


def test_a_batch_chooses_each_rows_token_as_that_row_would_alone():
    """One penalty pass and one argmax for the batch; each row still gets its own history, penalty and seed."""
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    answers = [[3, 7, 7, 9], [], [11], [3, 20, 21, 22, 23, 24]]
    options = [
        GenerationOptions(repetition_penalty=1.3),
        GenerationOptions(repetition_penalty=1.3),
        GenerationOptions(repetition_penalty=2.0),
        GenerationOptions(repetition_penalty=1.3, temperature=0.8, seed=5),
    ]
    for i in (0, 2):  # make each row's best token one it already said, so a missing penalty shows
        logits[i, answers[i][-1]] = logits[i].max() + 0.1
    batched = choose_tokens(logits, [RowSampler(o, torch.device("cpu")) for o in options], answers)
    alone = []
    for row, (opts, answer) in enumerate(zip(options, answers)):
        scores = penalize_repeats(logits[row], torch.tensor(answer, dtype=torch.long), opts.repetition_penalty)
        sampler = RowSampler(opts, torch.device("cpu"))
        alone.append(int(scores.argmax()) if sampler.generator is None else sampler.sample(scores))
    assert batched == alone
    assert batched[0] != int(logits[0].argmax()) and batched[2] != int(logits[2].argmax())
