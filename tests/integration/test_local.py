"""The local backend with real subprocess trials (tests/fixtures/fake_trainer.py).

The fake trainer's value is a known function of its parameter ``x`` and the epoch, and each epoch
sleeps a little, so a study takes seconds and every outcome can be checked against the core.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from hpo_operator.study import Study
from tests.fixtures.fake_trainer import CRASH_EXIT_CODE, score
from tests.support.local_study import assert_inside_budget, fake_config, run_study, views

pytestmark = pytest.mark.timeout(60)


def test_a_study_finishes_inside_its_budget_and_prunes_exactly_as_the_core_decides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.15")
    config = fake_config(max_resource=4, eta=2, deadline=6.0)
    result, doc = run_study(tmp_path, config)

    assert result.state == "Succeeded" and result.exit_code == 0
    # It runs until the deadline, or until no trial could reach its first rung before it.
    assert doc["reason"] in ("deadline", "no time for another trial")
    assert_inside_budget(doc)
    assert doc["plan"]["rungs"] == [1, 2]

    # Replaying every recorded report through the core prunes the same trials at the same rungs.
    study = Study(config, 2)
    assert list(study.rungs) == doc["plan"]["rungs"]
    replayed = study.rung_decisions(views(doc))
    pruned_by_runner = {t["index"]: t["pruned"] for t in doc["trials"] if t["status"] == "Pruned"}
    assert pruned_by_runner, "a study of this length prunes some trials"
    for t in doc["trials"]:
        if t["status"] == "Stopped":
            continue  # stopped at the deadline: reports sent while stopping came after the last decision
        decisions = replayed.get(t["index"], [])
        core_pruned = decisions and not decisions[-1].promoted
        if t["index"] in pruned_by_runner:
            assert core_pruned, t["name"]
            d = decisions[-1]
            assert pruned_by_runner[t["index"]] == {
                "rung": d.rung,
                "resource": d.resource,
                "value": d.value,
                "cutoff": d.cutoff,
            }
        else:
            assert not core_pruned, t["name"]

    # Values are the fake trainer's function of x and the epoch; the best is the best at R.
    for t in doc["trials"]:
        for r in t["reports"]:
            assert r["value"] == score(t["params"], int(r["resource"]))
    at_r = [t for t in doc["trials"] if any(r["resource"] == 4 for r in t["reports"])]
    best = max(at_r, key=lambda t: (score(t["params"], 4), -t["index"]))
    assert doc["best"]["index"] == best["index"]
    assert doc["best"]["hyperparameters"] == best["params"]
    assert json.loads((tmp_path / "out" / "best.json").read_text())["hyperparameters"] == best["params"]


def test_trials_get_the_trial_environment_and_write_logs(tmp_path: Path) -> None:
    config = fake_config(max_resource=3, deadline=4.0)
    _, doc = run_study(tmp_path, config)
    out = tmp_path / "out"
    reported = [t for t in doc["trials"] if t["reports"]]  # a trial stopped at start wrote nothing
    assert len(reported) >= 2
    for t in reported:
        folder = out / "trials" / t["name"]
        env = json.loads((folder / "checkpoints" / "env.json").read_text())
        assert env["HPO_STUDY"] == "fake"
        assert env["HPO_TRIAL"] == f"fake-{t['index']}" == t["name"]
        assert json.loads(env["HPO_HYPERPARAMETERS"]) == t["params"]
        assert env["HPO_METRIC"] == "score"
        assert env["HPO_MAX_RESOURCE"] == "3"
        assert env["HPO_REPORT_FILE"] == str((folder / "reports.jsonl").resolve())
        assert env["HPO_CHECKPOINT_DIR"] == str((folder / "checkpoints").resolve())
        assert env["CUDA_VISIBLE_DEVICES"] == "" and env["OMP_NUM_THREADS"] == "1"
        assert t["log"] == f"trials/{t['name']}/log.txt"
        assert f"{t['name']}: training with" in (out / t["log"]).read_text()
    assert doc["trials"][0]["params"] == {"x": 0.5}  # trial 0 takes the defaults


def test_a_crashing_trial_is_failed_with_its_exit_code_and_log_and_the_study_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Trial 0 is the first at rung 0, so it always continues there: it crashes, never pruned.
    monkeypatch.setenv("FAKE_CRASH_TRIALS", "0")
    result, doc = run_study(tmp_path, fake_config(max_resource=3, deadline=4.0))
    crashed = doc["trials"][0]
    assert crashed["status"] == "Failed"
    assert crashed["exitCode"] == CRASH_EXIT_CODE
    assert crashed["reason"] == f"exit code {CRASH_EXIT_CODE}"
    assert "simulated crash: out of memory" in crashed["logTail"]
    assert len(crashed["reports"]) == 1  # what it reported before crashing is kept
    assert len(doc["trials"]) > 2 and doc["counts"]["failed"] == 1
    assert result.state == "Succeeded" and doc["best"] is not None
    assert_inside_budget(doc)


def test_a_trial_that_ignores_sigterm_is_killed_after_the_grace_period_before_the_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_IGNORE_SIGTERM", "1")
    # An epoch longer than the grace period: a trial stopped at a rung cannot finish on its own.
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.4")
    _, doc = run_study(tmp_path, fake_config(deadline=7.0), grace=0.2)
    # Trials that reported had set SIGTERM aside; one stopped while starting up may die of SIGTERM.
    ended_by_us = [t for t in doc["trials"] if t["status"] in ("Pruned", "Stopped") and t["reports"]]
    assert ended_by_us
    for t in ended_by_us:
        # Killed after the grace period, unless its last epoch ended on its own within the grace.
        finished = t["exitCode"] == 0 and max(r["resource"] for r in t["reports"]) == 4
        assert (t["killed"] and t["exitCode"] == -signal.SIGKILL) or finished, t["name"]
    assert any(t["killed"] for t in ended_by_us)
    assert_inside_budget(doc)


def test_a_long_grace_is_cut_short_at_the_deadline_so_the_margin_stays_small(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_IGNORE_SIGTERM", "1")
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.6")
    # A grace longer than the budget, and trials of 9 epochs (5.4 s) that ignore SIGTERM: the two
    # started after the first two cannot end by themselves before the deadline, pruned or not, so
    # they are killed, which must still happen before it.
    _, doc = run_study(tmp_path, fake_config(max_resource=9, deadline=10.0), grace=30.0, poll=0.05)
    assert doc["budget"]["stopMarginSeconds"] == pytest.approx(1.0 + 3 * 0.05 + 0.5)
    killed = [t for t in doc["trials"] if t["killed"]]
    summary = [(t["name"], t["status"], t["killed"], t["exitCode"], len(t["reports"])) for t in doc["trials"]]
    assert killed and all(t["exitCode"] == -signal.SIGKILL for t in killed), summary
    assert all(t["status"] in ("Pruned", "Stopped") for t in killed)
    assert_inside_budget(doc)
    # Killed in the last seconds, not 30 s (the grace) before a 6 s deadline.
    assert all(t["endedAt"] > doc["deadline"] - 2.0 for t in killed)


def test_without_a_budget_the_first_trial_measures_one_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.3")
    result, doc = run_study(tmp_path, fake_config(max_resource=5, time_ratio=3.0), grace=0.2)
    first = doc["trials"][0]
    t1, t2 = sorted(r["time"] for r in first["reports"])[:2]
    # Trial 0 ran alone until its first two reports, which sized the budget: 3 x one training,
    # its start-up once plus 5 epochs at the rate between the two reports.
    assert all(t["startedAt"] >= t2 for t in doc["trials"][1:])
    assert len(doc["trials"]) > 1
    epoch = t2 - t1
    startup = max(0.0, t1 - first["startedAt"] - epoch)
    assert doc["budget"]["seconds"] == pytest.approx(3.0 * (startup + 5 * epoch), rel=0.02, abs=0.01)
    assert result.state == "Succeeded"
    assert_inside_budget(doc)


# --- the parts, without processes ---------------------------------------------------------------


