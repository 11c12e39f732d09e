"""The rule of tests/cluster/fixtures.py: a skipped e2e test fails unless HPO_SKIP_E2E=1, and the summary
counts the e2e tests that ran, passed, failed and were skipped."""

from __future__ import annotations

import pytest

CONFTEST = """
import os

import pytest

from tests.cluster.fixtures import (
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_runtest_makereport,
    pytest_terminal_summary,
)


@pytest.fixture(scope="session")
def cluster():
    pytest.skip("no binaries here")


@pytest.fixture
def required():
    return os.environ["HPO_E2E_REQUIRED"]
"""

TESTS = """
import pytest


def test_uses_the_cluster(cluster):
    pass


@pytest.mark.e2e
def test_skips_on_a_missing_tool():
    pytest.skip("helm is not installed")


@pytest.mark.e2e
def test_passes():
    pass


def test_unit(required):
    print("HPO_E2E_REQUIRED=" + required)
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    # The inner session sets HPO_E2E_REQUIRED; monkeypatch puts the outer session's value back.
    monkeypatch.setenv("HPO_E2E_REQUIRED", "")
    monkeypatch.delenv("HPO_SKIP_E2E", raising=False)
    pytester.makeini("[pytest]\nmarkers =\n    e2e: end-to-end\naddopts = -s --strict-markers\n")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_rule=TESTS)
    return pytester


def test_a_skipped_e2e_test_fails_and_the_summary_counts_it(suite: pytest.Pytester) -> None:
    result = suite.runpytest()
    result.assert_outcomes(passed=2, failed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*HPO_E2E_REQUIRED=1*",
        "*e2e test skipped: no binaries here; a skipped e2e test fails (HPO_SKIP_E2E=1 skips the e2e tests)*",
        "*e2e test skipped: helm is not installed; a skipped e2e test fails*",
        "*- e2e: 2 ran, 1 passed, 2 failed, 0 skipped -*",
    ])  # fmt: skip


def test_hpo_skip_e2e_skips_every_e2e_test_and_says_so(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPO_SKIP_E2E", "1")
    result = suite.runpytest()
    result.assert_outcomes(passed=1, skipped=3)
    result.stdout.fnmatch_lines(
        ["*HPO_E2E_REQUIRED=0*", "*- e2e: 0 ran, 0 passed, 3 skipped (HPO_SKIP_E2E=1) -*"]
    )


def test_no_summary_line_without_e2e_tests(suite: pytest.Pytester) -> None:
    result = suite.runpytest("-k", "test_unit")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*e2e:*")
