"""What the hardening tests and the ``kill -9`` trials try, and what holds: runs them and writes the table.

    python bench/reliability.py              # run the tests, print the table, rewrite docs/reliability.md
    python bench/reliability.py --junit F    # only tabulate an earlier run's JUnit XML

Each test function is one row; its parametrized cases are what it tried (a
test that records a ``tried`` property, like the schemathesis run, counts
its requests). A failing case is sorted by the word its message starts
with, which the tests put there: ``5xx:``, ``hung:`` or ``lost:``; any other
failure (a wrong status, an unclear message), and a known miss marked xfail, counts as ``wrong``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
KINDS = ("5xx", "hung", "lost", "wrong")
COMMAND = "python bench/reliability.py"


PATTERNS = ("test_hardening*.py", "test_kill_trials.py")  # the tests whose cases the table counts


def hardening_files() -> list[Path]:
    return sorted(p for pattern in PATTERNS for p in (ROOT / "tests").glob(pattern))


def run_tests(junit: Path) -> float:
    files = [str(p.relative_to(ROOT)) for p in hardening_files()]
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
         "-o", "junit_family=xunit1", *files],
        cwd=ROOT,
        check=False,
    )
    return time.perf_counter() - started


def tabulate(junit: Path) -> list[dict]:
    rows: dict[tuple[str, str], dict] = defaultdict(lambda: {"tried": 0, "held": 0, **{k: 0 for k in KINDS}})
    modules = {p.stem for p in hardening_files()}  # a whole suite's XML holds every other test too
    for case in ET.parse(junit).getroot().iter("testcase"):
        if case.get("classname", "").rpartition(".")[2] not in modules:
            continue
        skipped = case.find("skipped")
        known = skipped is not None and skipped.get("type") == "pytest.xfail"  # a known miss counts as one
        if skipped is not None and not known:
            continue
        module = case.get("classname", "").rpartition(".")[2]
        row = rows[(module, case.get("name", "").partition("[")[0])]
        recorded = {p.get("name"): p.get("value") for p in case.iter("property")}
        tried = int(recorded.get("tried", 1))
        row["tried"] += tried
        failure = next((e for e in (case.find("failure"), case.find("error"), skipped if known else None) if e is not None), None)
        if failure is None:
            row["held"] += tried
            continue
        message = f"{failure.get('message', '')} {failure.text or ''}"
        kind = next((k for k in KINDS[:3] if re.search(rf"\b{k}:", message)), "wrong")
        row[kind] += 1
        row["held"] += tried - 1
    return [{"file": file, "check": check, **counts} for (file, check), counts in sorted(rows.items())]


def markdown(rows: list[dict], seconds: float | None) -> str:
    lines = [
        "# Reliability: what is tried, and what holds",
        "",
        f"Regenerate with `{COMMAND}` (runs every `tests/test_hardening*.py` and `tests/test_kill_trials.py`, the same "
        "tests `make test` runs).",
        "",
        "*held*: refused with one clear 4xx in the OpenAI-style error body, or served as it should be; "
        "*5xx*: a server error; *hung*: no answer within 30 s; *lost*: a refused request changed what was stored; "
        "*wrong*: any other miss (a wrong status, an unclear message, or a known miss marked xfail). Property tests count as one try of "
        "up to 60 generated examples each; the schemathesis rows count requests.",
        "",
        "| file | check | tried | held | 5xx | hung | lost | wrong |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['file']} | {r['check'].removeprefix('test_').replace('_', ' ')} | {r['tried']} | {r['held']} "
        f"| {r['5xx']} | {r['hung']} | {r['lost']} | {r['wrong']} |"
        for r in rows
    ]
    total = {k: sum(r[k] for r in rows) for k in ("tried", "held", *KINDS)}
    lines.append(
        f"| **all** | | **{total['tried']}** | **{total['held']}** | **{total['5xx']}** | **{total['hung']}** "
        f"| **{total['lost']}** | **{total['wrong']}** |"
    )
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    lines += ["", f"Last run {stamp}{took}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--junit", type=Path, help="Tabulate this JUnit XML instead of running the tests.")
    args = parser.parse_args()
    seconds = None
    junit = args.junit
    if junit is None:
        junit = Path(tempfile.mkdtemp(prefix="reliability-")) / "junit.xml"
        seconds = run_tests(junit)
    text = markdown(tabulate(junit), seconds)
    DOC.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
