"""Knowledge base benchmark: ingestion throughput, query latency and recall@5, hybrid against dense-only.

    .venv/bin/python bench/knowledge.py                       # 1k and 10k chunks (about 2 minutes here)
    .venv/bin/python bench/knowledge.py --sizes 1000,10000,100000

The corpus is synthetic and deterministic: catalogue pages (Markdown, one
product per section, so one section is one chunk) of products with invented
names and unique model codes; every tenth product is described in Traditional
Chinese. The collection grows through the sizes by ingesting more pages, so
each step measures real ingestion (load, chunk, embed, Chroma, BM25) into a
collection of that size. The question set is labelled by construction: each
question is about one product (its weight, origin, warranty, or which
product a model code belongs to; Chinese ones in Simplified script) and the
right answer is that product's section. Latency is of ``KnowledgeBase.retrieve``
from a cold query string, so embedding the query is included.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SECTIONS_PER_PAGE = 20
SYLLABLES = (
    "ka vo ri ne tes sa lo mi du fen gar hal ix jor kel mun nor pav quen ros sul tar ul vek "
    "wyn zor bel cas dri eth fal gim hor isk jas kor lum mav nix orb pel qua rin sov tum yev"
).split()
CATEGORIES = [
    ("folding camp stove", "折疊露營爐"),
    ("trail running shoe", "越野跑鞋"),
    ("down sleeping bag", "羽絨睡袋"),
    ("headlamp", "頭燈"),
    ("trekking pole", "登山杖"),
    ("rain jacket", "雨衣"),
    ("water filter", "濾水器"),
    ("dome tent", "圓頂帳篷"),
    ("climbing harness", "攀岩吊帶"),
    ("insulated bottle", "保溫瓶"),
    ("daypack", "日用背包"),
    ("GPS watch", "GPS手錶"),
    ("camping chair", "露營椅"),
    ("power bank", "行動電源"),
]
TOWNS = (
    "Nordvik Ashgrove Belmora Caldris Dunmere Elstow Farrowby Glenhollow Harlund Istermark Jorvale Kessington".split()
)
WARRANTIES = [6, 12, 18, 24, 36]
NAME_SPACE = len(SYLLABLES) ** 3


def product(i: int) -> dict:
    """Product ``i`` of the catalogue, the same in every run and at every corpus size."""
    rng = random.Random(i)
    n = (i * 7919 + 13) % NAME_SPACE  # a bijection: every product has its own three-syllable name
    name = "".join(SYLLABLES[(n // len(SYLLABLES) ** k) % len(SYLLABLES)] for k in range(3)).capitalize()
    name += " " + rng.choice(SYLLABLES).capitalize() + rng.choice(SYLLABLES)
    letters = "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(2))
    category, category_zh = rng.choice(CATEGORIES)
    return {
        "name": name,
        "code": f"{letters}-{(i * 7919 + 101) % 100003:05d}",  # unique below 100003 products
        "category": category,
        "category_zh": category_zh,
        "town": rng.choice(TOWNS),
        "grams": rng.randrange(80, 4000, 10),
        "euros": rng.randrange(9, 600),
        "months": rng.choice(WARRANTIES),
        "chinese": i % 10 == 7,
    }


def section(p: dict) -> str:
    if p["chinese"]:
        return (
            f"## {p['name']}\n\n{p['name']}是一款{p['category_zh']}，在{p['town']}設計。重量{p['grams']}克，"
            f"售價{p['euros']}歐元，保修{p['months']}個月。型號為{p['code']}。"
        )
    return (
        f"## {p['name']}\n\nThe {p['name']} is a {p['category']} designed in {p['town']}. "
        f"It weighs {p['grams']} grams and costs {p['euros']} euros. Every unit carries a "
        f"{p['months']}-month warranty against defects. Its model code is {p['code']}."
    )


def question(p: dict, kind: int) -> str:
    if p["chinese"]:
        return [f"{p['name']}的保修期是多久？", f"型号{p['code']}是什么产品？"][kind % 2]
    return [
        f"How heavy is the {p['name']}?",
        f"Which product has the model code {p['code']}?",
        f"Where was the {p['name']} designed?",
        f"How long is the warranty on the {p['name']}?",
    ][kind % 4]


def write_pages(folder: Path, start: int, end: int) -> list[Path]:
    """Catalogue pages holding products [start, end); both are multiples of SECTIONS_PER_PAGE."""
    paths = []
    for page in range(start // SECTIONS_PER_PAGE, end // SECTIONS_PER_PAGE):
        first = page * SECTIONS_PER_PAGE
        body = "\n\n".join(section(product(i)) for i in range(first, first + SECTIONS_PER_PAGE))
        path = folder / f"catalogue-{page:05d}.md"
        path.write_text(f"# Catalogue page {page}\n\n{body}\n", encoding="utf-8")
        paths.append(path)
    return paths


def page_of(i: int) -> str:
    return f"catalogue-{i // SECTIONS_PER_PAGE:05d}.md"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def measure(kb, size: int, n_questions: int, mode: str) -> tuple[float, float, float, float]:
    """(p50 ms, p95 ms, median CPU ms, recall@5) of one retrieval mode over questions about products below ``size``.

    CPU time (all threads of this process) is reported beside wall time because on a shared machine
    the wall time also measures everyone else's load.
    """
    rng = random.Random(size)
    asked = rng.sample(range(size), min(n_questions, size))
    for i in asked[:5]:  # warm caches, as a running server would be
        kb.retrieve(question(product(i), i), ["bench"], k=5, min_score=0.0, mode=mode)
    latencies, cpu, hits = [], [], 0
    for i in asked:
        p = product(i)
        started, cpu_started = time.perf_counter(), time.process_time()
        passages = kb.retrieve(question(p, i), ["bench"], k=5, min_score=0.0, mode=mode)
        latencies.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - cpu_started) * 1000)
        hits += any(x.source == page_of(i) and x.section == p["name"] for x in passages)
    return statistics.median(latencies), percentile(latencies, 0.95), statistics.median(cpu), hits / len(asked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000", help="Corpus sizes in chunks, ascending, comma-separated.")
    parser.add_argument("--questions", type=int, default=200, help="Labelled questions per size.")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice, as the server runs)."
    )
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = sorted({int(s) // SECTIONS_PER_PAGE * SECTIONS_PER_PAGE for s in args.sizes.split(",")})

    from core.settings import PACKAGED_EMBEDDING_MODEL, load_settings
    from knowledge.embeddings import SentenceEncoder
    from knowledge.knowledge_base import KnowledgeBase

    encoder = SentenceEncoder(PACKAGED_EMBEDDING_MODEL)
    encoder(["warm up"])
    print(
        f"knowledge base, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, load average "
        f"{os.getloadavg()[0]:.1f} at start; {args.questions} questions per size, k=5",
        flush=True,
    )
    header = (
        f"{'chunks':>7} | {'ingest ch/s':>11} | {'hybrid p50':>10} | {'p95':>6} | {'cpu':>6} | {'dense p50':>9} | "
        f"{'p95':>6} | {'cpu':>6} | {'recall@5 hybrid':>15} | {'dense':>5} | {'hybrid/dense':>12}"
    )
    print(header + "\n" + "-" * len(header), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-knowledge-") as tmp:
        pages = Path(tmp) / "pages"
        pages.mkdir()
        settings = load_settings({"home": Path(tmp) / "home"}, environ={})
        with KnowledgeBase(settings, encoder) as kb:
            have = 0
            for size in sizes:
                files = write_pages(pages, have, size)
                started = time.perf_counter()
                report = kb.ingest(files, "bench", progress=True)
                throughput = report.chunks / (time.perf_counter() - started)
                assert report.chunks == size - have and not report.skipped, report.to_dict()
                h50, h95, hcpu, hrec = measure(kb, size, args.questions, "hybrid")
                d50, d95, dcpu, drec = measure(kb, size, args.questions, "dense")
                ratio = hrec / drec if drec else float("inf")
                print(
                    f"{size:>7} | {throughput:>11.0f} | {h50:>8.1f}ms | {h95:>4.0f}ms | {hcpu:>4.0f}ms | "
                    f"{d50:>7.1f}ms | {d95:>4.0f}ms | {dcpu:>4.0f}ms | {hrec:>15.3f} | {drec:>5.3f} | {ratio:>11.2f}x",
                    flush=True,
                )
                have = size
    print(f"load average {os.getloadavg()[0]:.1f} at the end (wall times include the machine's other work)")
    print("targets: hybrid p50 <= 50 ms at 100k chunks; recall@5 hybrid >= dense-only and >= 0.9")


if __name__ == "__main__":
    main()
