"""hpo run with ASHA's promote variant and the final training, with real subprocess trials."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.support.local_study import assert_inside_budget, fake_config, run_study

pytestmark = pytest.mark.timeout(90)


def test_promoted_trials_resume_from_their_rung_and_the_rest_lose_their_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.1")
    config = replace(fake_config(max_resource=4, eta=2, deadline=8.0), asha_variant="promote")
    result, doc = run_study(tmp_path, config, grace=0.3)
    assert result.state == "Succeeded", doc["reason"]
    assert_inside_budget(doc)
    statuses = {t["status"] for t in doc["trials"]}
    assert "Paused" in statuses and "Pruned" not in statuses
    promoted = [t for t in doc["trials"] if t["runs"] > 1]
    assert promoted, "some trials were promoted"
    for t in doc["trials"]:
        # One report per epoch, each epoch once: a resumed run goes on from its rung.
        resources = [r["resource"] for r in t["reports"]]
        assert resources == list(range(1, len(resources) + 1)), (t["name"], resources)
    # A first run stops at the first rung (1 epoch); a promotion trains to the next level.
    assert all(len(t["reports"]) >= 1 for t in doc["trials"] if t["status"] == "Paused")
    best = doc["best"]["index"]
    out = tmp_path / "out"
    for t in doc["trials"]:
        kept = (out / "trials" / t["name"] / "checkpoints").exists()
        assert kept == (t["index"] == best), t["name"]


def test_final_training_trains_the_best_on_to_r(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.1")
    config = replace(
        fake_config(max_resource=16, eta=2, deadline=4.0), asha_variant="promote", final_training=True
    )
    result, doc = run_study(tmp_path, config, grace=0.3)
    assert result.state == "Succeeded", doc["reason"]
    final = doc["final"]
    assert final is not None and final["resource"] == 16 and final["value"] is not None
    trial = next(t for t in doc["trials"] if t["index"] == final["index"])
    # No trial reaches 16 epochs inside 4 s: the best was resumed after HPO and trained on.
    assert trial["final"] and trial["runs"] > 1
    assert trial["status"] == "Completed" and max(r["resource"] for r in trial["reports"]) == 16
    resources = [r["resource"] for r in trial["reports"]]
    assert resources == list(range(1, 17))
    assert (tmp_path / "out" / final["checkpointDir"]).is_dir()
    # The final training may run past the HPO deadline; HPO itself does not.
    others = [t for t in doc["trials"] if t["index"] != final["index"]]
    assert all(t["endedAt"] <= doc["deadline"] for t in others)
