"""The operator's startup waits until the API serves its custom resources, so that kopf, which
looks them up once, watches them."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from hpo_operator.kube.api import ApiError
from hpo_operator.kube.handlers import missing_resources, wait_until_served

GROUP_PATH = "/apis/hpo.dev/v1alpha1"


class ScriptedApi:
    """Answers GETs of the group's resource list from a script: an ApiError to raise, or a list of
    resource names."""

    def __init__(self, *answers: ApiError | list[str]) -> None:
        self.answers = list(answers)
        self.paths: list[str] = []

    def get(self, path: str) -> Any:
        self.paths.append(path)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, ApiError):
            raise answer
        return {"kind": "APIResourceList", "resources": [{"name": n} for n in answer]}


NOT_FOUND = ApiError(404, "GET", GROUP_PATH, "404 page not found")


def test_missing_resources_names_what_the_group_lacks() -> None:
    assert missing_resources(ScriptedApi(NOT_FOUND)) == ["hpostudies", "hpotrials"]  # type: ignore[arg-type]
    api = ScriptedApi(["hpostudies", "hpostudies/status"])
    assert missing_resources(api) == ["hpotrials"]  # type: ignore[arg-type]
    assert api.paths == [GROUP_PATH]
    both = ScriptedApi(["hpostudies", "hpostudies/status", "hpotrials", "hpotrials/status"])
    assert missing_resources(both) == []  # type: ignore[arg-type]


def test_the_startup_waits_until_both_are_served_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    api = ScriptedApi(NOT_FOUND, ["hpostudies"], ["hpostudies", "hpotrials"])
    with caplog.at_level(logging.WARNING, logger="hpo_operator"):
        asyncio.run(wait_until_served(api, poll=0.01, log_every=60))  # type: ignore[arg-type]
    assert len(api.paths) == 3
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "hpostudies.hpo.dev/v1alpha1, hpotrials.hpo.dev/v1alpha1 not served yet (are the CRDs applied?); "
        "watching starts once they are"
    ]
