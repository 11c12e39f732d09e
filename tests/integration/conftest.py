"""Integration tests run real processes: `hpo run` and its trials, the trainer, the CLI as a command,
the metrics collector around real commands, helm and promtool. They need no cluster; each gets the
`integration` marker (`pytest -m "not integration"` leaves them out)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)
