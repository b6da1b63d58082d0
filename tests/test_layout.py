"""The shape of the code that the one-way-house redesign promised, kept by the suite.

The layering itself is checked by ``lint-imports`` (``make test`` runs it
first); these checks keep the product's functions short enough to read and
every module small enough to hold one concern.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "training", "engine", "knowledge", "conversations", "adapters", "core", "bench")
MAX_FUNCTION_LINES = 80  # in bot/, the product
MAX_MODULE_LINES = 450  # everywhere outside tests


def modules(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def test_no_module_is_over_its_size():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines()) for p in modules(*PACKAGES)}
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_no_function_of_the_product_is_over_its_length():
    long = {}
    for path in modules("bot"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.name}"] = lines
    assert long == {}

