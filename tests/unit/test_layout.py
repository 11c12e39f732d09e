"""The layout of the tests: test modules import helpers from tests/support (or tests/fixtures,
tests/cluster), never from another test module, and benchmarks/ imports no test either."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEST_KINDS = ("tests.unit", "tests.integration", "tests.e2e")


def imported_modules(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def is_test_module(module: str) -> bool:
    last = module.rsplit(".", 1)[-1]
    return module.startswith(TEST_KINDS) or last.startswith("test_") or last == "conftest"


def test_no_module_imports_a_test_module() -> None:
    sources = [*(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]
    offending = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sources
        for module in imported_modules(path)
        if is_test_module(module)
    ]
    assert not offending, "import helpers from tests/support instead:\n" + "\n".join(offending)


def test_benchmarks_import_only_the_support_package_and_the_cluster_harness_from_tests() -> None:
    allowed = ("tests.support", "tests.cluster", "tests.fixtures")
    offending = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in (ROOT / "benchmarks").rglob("*.py")
        for module in imported_modules(path)
        if module.startswith("tests") and not module.startswith(allowed)
    ]
    assert not offending, "\n".join(offending)
