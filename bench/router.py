"""Routing latency and accuracy: the embedding router against asking the base LLM to classify.

    .venv/bin/python bench/router.py [--passes 3] [--skip-llm]

On the demo labelled set (demo/routing_eval.jsonl: support, legal and
off-topic messages in English and Chinese) this measures, in one run:

- the router over the two demo adapters (all their examples);
- the router over 20 adapters x 20 examples: the two demo adapters cut to 20
  examples each plus 18 distractor adapters on other subjects, so the
  labelled set also tests that unrelated adapters do not steal its messages;
- the same router on the torch encoder (sentence-transformers on PyTorch),
  the backend the product used before the ONNX one: the encoder's share;
- the baseline: the base model (SmolLM2-135M, 4-bit) asked to answer with one
  word, "support", "legal" or "none", given each adapter's description.

Latency is per message, one message at a time as in serving (medians and
95th percentiles over --passes passes of the set). Target: router p50 <= 10 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.manifest import Manifest  # noqa: E402
from bot.calibration import LabelledMessage, calibrate  # noqa: E402
from bot.router import Router  # noqa: E402
from core.settings import load_settings  # noqa: E402
from knowledge.embeddings import (
    SentenceEncoder,  # noqa: E402
    encoder_for,  # noqa: E402
)

DEMO = ROOT / "demo"
TARGET_P50_MS = 10.0
EXAMPLES_PER_ADAPTER = 20
TEMPLATES = (
    "How do I deal with {}?",
    "Can you explain {} to a beginner?",
    "What should I know about {}?",
    "Any tips for {}?",
)
# Subjects far from the demo adapters and from the labelled set's off-topic messages.
DISTRACTORS = {
    "gardening": ["tomato seedlings", "pruning roses", "a compost heap", "moss in the lawn", "aphids on my plants"],
    "astronomy": [
        "spotting Saturn's rings",
        "a telescope eyepiece",
        "the phases of the moon",
        "meteor showers",
        "light pollution",
    ],
    "car-care": [
        "a flat car battery",
        "changing engine oil",
        "worn brake pads",
        "a check engine light",
        "tyre pressure",
    ],
    "python": [
        "a Python import error",
        "list comprehensions",
        "virtual environments",
        "async functions",
        "unit tests in pytest",
    ],
    "taxes": [
        "filing my income tax return",
        "deductible expenses",
        "a tax refund delay",
        "self-employed tax",
        "VAT registration",
    ],
    "networking": ["slow home wifi", "router port forwarding", "a mesh network", "DNS settings", "an ethernet cable"],
    "photography": ["shutter speed", "low light photos", "portrait lenses", "RAW files", "the rule of thirds"],
    "fitness": [
        "a marathon training plan",
        "sore muscles",
        "proper squat form",
        "interval training",
        "stretching after runs",
    ],
    "chess": [
        "the Sicilian defence",
        "endgame technique",
        "a chess opening",
        "blitz time controls",
        "chess tactics puzzles",
    ],
    "plumbing": ["a dripping tap", "a blocked sink", "low water pressure", "a running toilet", "frozen pipes"],
    "knitting": ["casting on", "a cable knit pattern", "dropped stitches", "choosing yarn weight", "knitting socks"],
    "cycling": [
        "a slipping bike chain",
        "adjusting gears",
        "a puncture on a road bike",
        "bike saddle height",
        "disc brakes squealing",
    ],
    "smartphones": [
        "a phone battery draining fast",
        "a cracked screen",
        "phone storage full",
        "app crashes",
        "backing up my phone",
    ],
    "careers": ["a job interview", "writing a CV", "asking for a raise", "a career change", "a cover letter"],
    "renting": [
        "a flat viewing",
        "a tenancy deposit",
        "a noisy neighbour",
        "a broken boiler in my rental",
        "subletting a room",
    ],
    "music": ["guitar chords", "reading sheet music", "tuning a violin", "music scales", "learning the piano"],
    "woodworking": ["sanding oak", "a dovetail joint", "wood glue", "choosing a chisel", "finishing with varnish"],
    "skincare": ["dry skin in winter", "choosing sunscreen", "acne scars", "a night cream", "sensitive skin"],
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def demo_manifest(name: str, limit: int | None = None) -> Manifest:
    fields = json.loads((DEMO / name / "manifest.json").read_text(encoding="utf-8"))
    examples = fields["examples"]
    if limit is not None and len(examples) > limit:  # an even spread keeps the English/Chinese mix
        examples = [examples[round(i * (len(examples) - 1) / (limit - 1))] for i in range(limit)]
    return Manifest(name=name, version=1, description=fields["description"], examples=examples)


def twenty_adapters() -> list[Manifest]:
    manifests = [demo_manifest("support", EXAMPLES_PER_ADAPTER), demo_manifest("legal", EXAMPLES_PER_ADAPTER)]
    for name, subjects in DISTRACTORS.items():
        examples = [template.format(subject) for subject in subjects for template in TEMPLATES]
        manifests.append(Manifest(name=name, version=1, examples=examples[:EXAMPLES_PER_ADAPTER]))
    return manifests


def labelled() -> list[LabelledMessage]:
    lines = (DEMO / "routing_eval.jsonl").read_text(encoding="utf-8").splitlines()
    return [LabelledMessage(**json.loads(line)) for line in lines if line.strip()]


def measure(classify, cases: list[LabelledMessage], passes: int, judge: bool = True) -> dict:
    """Accuracy of the first pass (when ``judge``); wall and CPU time of every call, in milliseconds.

    CPU time (this process, all threads) is shown beside wall time because on a
    shared machine wall time also counts the time other processes held the cores.
    """
    wall, cpu, correct = [], [], 0
    for number in range(passes):
        for case in cases:
            started, started_cpu = time.perf_counter(), time.process_time()
            predicted = classify(case.text)
            wall.append((time.perf_counter() - started) * 1000)
            cpu.append((time.process_time() - started_cpu) * 1000)
            correct += number == 0 and predicted == case.adapter
    return {
        "accuracy": correct / len(cases) if judge else None,
        "p50": statistics.median(wall),
        "p95": percentile(wall, 0.95),
        "cpu": statistics.median(cpu),
        "n": len(wall),
    }


def router_for(encoder, settings, manifests: list[Manifest]) -> tuple[Router, float]:
    router = Router(encoder, settings.router)
    started = time.perf_counter()
    router.sync(manifests)
    return router, time.perf_counter() - started


def llm_classifier(settings, manifests: list[Manifest]):
    """The base model as a zero-shot classifier: the baseline a router replaces."""
    from engine.embedded import Engine

    engine = Engine(settings)
    options = engine.default_options(max_new_tokens=4, temperature=0.0)
    labels = [m.name for m in manifests] + ["none"]
    categories = "\n".join(f"- {m.name}: {m.description}" for m in manifests) + "\n- none: anything else"
    system = "You are a message classifier. You never answer the message; you only name its category."
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, labels)) + ")", re.IGNORECASE)  # "supporting" counts

    def classify(text: str) -> str | None:
        prompt = (
            f"Categories:\n{categories}\n\nMessage: {text}\n\n"
            f"Which category is the message in? Reply with one word: {', '.join(labels)}."
        )
        messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
        reply = engine.generate(messages, None, options)
        match = pattern.search(reply.text)
        label = match.group(1).lower() if match else "none"
        return None if label == "none" else label

    return classify


def row(*cells) -> str:
    widths = (34, 12, 10, 10, 10, 10, 7)
    padded = [str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
    return "| " + " | ".join(padded) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=3, help="Passes over the labelled set for router latencies.")
    parser.add_argument("--skip-llm", action="store_true", help="Leave out the LLM baseline (no base model load).")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice).")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    cases = labelled()
    with tempfile.TemporaryDirectory(prefix="bench-router-") as home:
        settings = load_settings({"home": home}, environ={})
        encoder = encoder_for(settings)
        encoder(["warm up"])
        torch_encoder = SentenceEncoder(settings.embedding_model, backend="torch")
        torch_encoder(["warm up"])
        demo = [demo_manifest("support"), demo_manifest("legal")]
        small, small_sync = router_for(encoder, settings, demo)
        large, large_sync = router_for(encoder, settings, twenty_adapters())
        on_torch, _ = router_for(torch_encoder, settings, twenty_adapters())
        for router in (small, large, on_torch):
            for case in cases[:5]:
                router.route(case.text)  # first calls load jieba and OpenCC
        started = time.perf_counter()
        one_more = Manifest(name="one-more", version=1, examples=["How do I reset my smart thermostat?"])
        large.sync([*twenty_adapters(), one_more])
        added_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        large.sync(twenty_adapters())  # and removed again: back to 20 x 20
        removed_ms = (time.perf_counter() - started) * 1000

        demo_size = f"2 x {sum(len(m.examples) for m in demo) // 2}"
        large_size = f"20 x {EXAMPLES_PER_ADAPTER}"
        twenty = measure(lambda t: large.route(t).adapter, cases, args.passes)
        results = [
            ("router, 2 demo adapters", demo_size, measure(lambda t: small.route(t).adapter, cases, args.passes)),
            ("router, 20 adapters", large_size, twenty),
            ("floor: the encoder alone", "-", measure(lambda t: encoder([t]), cases, args.passes, judge=False)),
        ]
        torch_router = measure(lambda t: on_torch.route(t).adapter, cases, args.passes)
        results += [
            ("router, 20 adapters, torch encoder", large_size, torch_router),
            ("floor: the torch encoder alone", "-", measure(lambda t: torch_encoder([t]), cases, args.passes, judge=False)),
        ]
        calibrated = calibrate(large, cases)
        if not args.skip_llm:
            print("loading the base model for the LLM baseline ...", file=sys.stderr)
            classify = llm_classifier(settings, demo)
            classify(cases[0].text)  # warm-up
            llm = measure(classify, cases, 1)
            results.append(("baseline: base LLM classifies", "2 (descr.)", llm))

    import torch

    print(
        f"\nRouting on {len(cases)} labelled messages (demo/routing_eval.jsonl); encoder backend {encoder.backend}; "
        f"{os.cpu_count()} CPUs, "
        f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}\n"
    )
    print(row("method", "adapters", "accuracy", "p50 ms", "p95 ms", "cpu p50 ms", "calls"))
    print(row("-" * 34, "-" * 12, "-" * 10, "-" * 10, "-" * 10, "-" * 10, "-" * 7))
    for name, adapters, r in results:
        accuracy = "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        figures = [accuracy, f"{r['p50']:.1f}", f"{r['p95']:.1f}", f"{r['cpu']:.1f}"]
        print(row(name, adapters, *figures, r["n"]))
    router_p50 = twenty["p50"]
    print()
    print(
        f"ratio: the router on the torch encoder takes {torch_router['p50'] / router_p50:.1f}x the p50 of the router "
        f"on {encoder.backend} (20 adapters; accuracy {torch_router['accuracy']:.3f} vs {twenty['accuracy']:.3f})"
    )
    print(
        f"index build: 2 demo adapters {small_sync:.2f} s, 20 x 20 examples {large_sync:.2f} s; "
        f"live: one more adapter added in {added_ms:.0f} ms, removed in {removed_ms:.0f} ms"
    )
    print(
        f"20 adapters at threshold {settings.router.threshold}: accuracy {calibrated.accuracy:.3f}; calibrated on "
        f"this set (in-sample), threshold {calibrated.best_threshold} gives {calibrated.best_accuracy:.3f}"
    )
    if not args.skip_llm:
        print(
            f"ratio: the LLM classifier's p50 is {llm['p50'] / router_p50:.0f}x the router's (20 adapters); "
            f"accuracy {twenty['accuracy']:.3f} vs {llm['accuracy']:.3f}"
        )
    verdict = "met" if router_p50 <= TARGET_P50_MS else "NOT met"
    print(f"target: router p50 <= {TARGET_P50_MS:.0f} ms with 20 x 20: {verdict} ({router_p50:.1f} ms)")


if __name__ == "__main__":
    main()
