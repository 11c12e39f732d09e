"""`hpo plot`: the curves model read from study.json and from API objects, the figure drawn from it, and
the plot and kubectl plugin commands up to the cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from hpo_operator.curves import BestPoint, Point, PrunedAt, StudyCurves
from hpo_operator.kube.curves import cluster_curves
from hpo_operator.kube.observe import to_rfc3339
from hpo_operator.kube.reading import ClusterAccess, context_namespace
from hpo_operator.kubectl_plugin import plugin as kubectl_hpo
from hpo_operator.plot import CURVES_XLABEL, TIMELINE_XLABEL, save_plot, study_figure, trial_gid
from tests.support.figures import PNG_SIZE, png_size, trial_lines
from tests.support.hpo_cli import hpo_here
from tests.support.kube_world import T0, study, trial

JSON = dict[str, Any]
BEST = {"trial": "s-1", "index": 1, "value": 0.9, "resource": 9, "hyperparameters": {"x": 0.1}}


def study_file() -> JSON:
    """A finished local study of three trials: s-0 pruned at rung 0 (resource 1), s-1 completed (the
    best), s-2 stopped at the deadline; its clock starts at T0."""
    reports = {
        0: [(1, 0.5, 2.0), (2, 0.52, 3.0)],  # the report at 2 came before SIGTERM took effect
        1: [(1, 0.6, 2.5), (3, 0.8, 4.5), (9, 0.9, 10.5)],
        2: [(1, 0.55, 12.0), (3, 0.7, 14.0)],
    }
    phases = {0: "Pruned", 1: "Completed", 2: "Stopped"}
    times = {0: (1.0, 3.5), 1: (1.5, 11.0), 2: (11.0, 49.0)}
    trials = [
        {
            "index": i,
            "name": f"s-{i}",
            "status": phases[i],
            "startedAt": T0 + times[i][0],
            "endedAt": T0 + times[i][1],
            "reports": [
                {"seq": k, "resource": r, "value": v, "time": T0 + t, "extra": {}}
                for k, (r, v, t) in enumerate(reports[i])
            ],
            "pruned": {"rung": 0, "resource": 1, "value": 0.5, "cutoff": 0.6} if i == 0 else None,
        }
        for i in range(3)
    ]
    return {
        "name": "s",
        "config": {"metric": "accuracy", "mode": "max", "maximumResource": 9},
        "plan": {"rungs": [1, 3], "maximumResource": 9},
        "startedAt": T0,
        "deadline": T0 + 90,
        "finishedAt": T0 + 50,
        "updatedAt": T0 + 50,
        "budget": {"finishedInsideSeconds": 40},
        "best": {**BEST, "metric": "accuracy", "mode": "max"},
        "trials": trials,
    }


def cluster_objects() -> tuple[JSON, list[JSON]]:
    """The same study as the operator leaves it in the API: times as RFC 3339, verdicts in the
    annotation, the plan, budget and best in the study's status."""
    doc = study_file()
    status = {
        "phase": "Succeeded",
        "plan": {"rungs": [1, 3], "maximumResource": 9},
        "budget": {
            "startedAt": to_rfc3339(T0, micro=True),
            "deadline": to_rfc3339(T0 + 90),
            "budgetSeconds": 90,
            "finishedAt": to_rfc3339(T0 + 50, micro=True),
            "finishedInsideSeconds": 40,
        },
        "best": BEST,
    }
    trials = []
    for t in doc["trials"]:
        reports = [(r["resource"], r["value"], r["time"] - T0) for r in t["reports"]]
        extra = {"rung": 0} if t["pruned"] else {}
        trials.append(
            trial(
                t["index"],
                *reports,
                phase=t["status"],
                startedAt=to_rfc3339(t["startedAt"], micro=True),
                finishedAt=to_rfc3339(t["endedAt"], micro=True),
                **extra,
            )
        )
    return study(status), trials


def test_a_local_study_and_the_same_study_in_the_cluster_give_the_same_curves() -> None:
    local = StudyCurves.of_study_file(study_file())
    s, trials = cluster_objects()
    assert cluster_curves(s, list(reversed(trials)), now=T0 + 300) == local
    # And what they give is the study: spot checks against the document.
    assert (local.metric, local.mode, local.rungs, local.max_resource) == ("accuracy", "max", [1, 3], 9)
    assert (local.deadline, local.finished_at, local.end, local.finished_inside) == (
        T0 + 90,
        T0 + 50,
        T0 + 50,
        40,
    )
    assert local.best == BestPoint(trial="s-1", index=1, value=0.9, resource=9)
    assert [t.name for t in local.trials] == ["s-0", "s-1", "s-2"]
    assert local.trials[0].pruned == PrunedAt(rung=0, resource=1, value=0.5)
    assert local.trials[1].points[-1] == Point(resource=9, value=0.9, time=T0 + 10.5)


def test_cluster_curves_read_the_operators_record_not_what_a_trial_wrote() -> None:
    s, trials = cluster_objects()
    pruned = trials[0]
    # A report appended after the verdict does not count, and a phase a trial forged in its status
    # is not the operator's.
    pruned["status"]["reports"].append({"seq": 9, "resource": 9, "value": 0.99, "time": T0 + 20})
    pruned["status"]["phase"] = "Completed"
    curves = cluster_curves(s, trials, now=T0 + 300)
    got = curves.trials[0]
    assert got.phase == "Pruned" and [p.resource for p in got.points] == [1, 2]
    assert got.pruned == PrunedAt(rung=0, resource=1, value=0.5)


def test_a_running_cluster_study_ends_now_and_keeps_its_deadlines_milliseconds() -> None:
    started = T0 + 0.25
    status = {
        "phase": "Running",
        "plan": {"rungs": [1, 3], "maximumResource": 9},
        "budget": {
            "startedAt": to_rfc3339(started, micro=True),
            "deadline": to_rfc3339(started + 90),  # written to the second
            "budgetSeconds": 90,
        },
    }
    trials = [
        # Pruned at rung 1 (resource 3) by its first report past it, at 4. Its finishedAt is
        # written to the second, 5: before its last report at 5.4, where its bar ends.
        trial(
            0,
            (1, 0.5, 2),
            (4, 0.6, 5.4),
            phase="Pruned",
            rung=1,
            startedAt=to_rfc3339(T0 + 1),
            finishedAt=to_rfc3339(T0 + 5.6),
        ),
        trial(1, (1, 0.7, 3), phase="Running", startedAt=to_rfc3339(T0 + 2)),
        trial(2),  # created, not started: no bar, no line
    ]
    curves = cluster_curves(study(status), trials, now=T0 + 30)
    assert curves.deadline == started + 90 and curves.started_at == started
    assert curves.finished_at is None and curves.end == T0 + 30 and curves.best is None
    assert curves.trials[0].pruned == PrunedAt(rung=1, resource=3, value=0.6)
    assert (curves.trials[0].started_at, curves.trials[0].ended_at) == (T0 + 1, T0 + 5.4)
    assert [t.phase for t in curves.trials] == ["Pruned", "Running", "Pending"]
    assert curves.trials[1].ended_at is None and curves.trials[2].started_at is None
    assert curves.metric == "accuracy" and curves.mode == "max"


def test_the_figure_has_one_line_per_trial_that_reported_and_a_bar_per_trial_that_started(
    tmp_path: Path,
) -> None:
    s, trials = cluster_objects()
    trials.append(trial(3))  # not started: neither a line nor a bar
    curves = cluster_curves(s, trials, now=T0 + 300)
    figure = study_figure(curves)
    left, right = figure.axes
    assert (left.get_xlabel(), left.get_ylabel()) == (CURVES_XLABEL, "accuracy (max)")
    assert left.get_title() == "s: learning curves" and right.get_xlabel() == TIMELINE_XLABEL
    assert trial_lines(figure) == [trial_gid(t) for t in curves.trials[:3]]
    # The pruned trial's line ends at its rung; its report past the rung trails off on its own.
    pruned_line = next(line for line in left.get_lines() if line.get_gid() == "trial:s-0")
    assert list(pruned_line.get_xdata()) == [1]
    assert len(right.patches) == 3  # the bars
    labels = [t.get_text() for t in right.get_legend().get_texts()]
    assert "deadline (90s budget)" in labels and "finished, 40.0s inside" in labels
    out = save_plot(curves, tmp_path / "deep" / "s.png")
    assert png_size(out) == PNG_SIZE


def test_hpo_plot_draws_a_local_study_into_its_folder(tmp_path: Path) -> None:
    (tmp_path / "study.json").write_text(json.dumps(study_file()))
    done = hpo_here("plot", str(tmp_path))
    assert done.exit_code == 0, done.output
    assert done.stdout.strip() == str(tmp_path / "study.png")
    assert png_size(tmp_path / "study.png") == PNG_SIZE


def test_a_name_that_is_no_folder_is_a_cluster_study_and_a_missing_cluster_exits_2(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-kubeconfig")
    done = hpo_here("plot", "demo", "--kubeconfig", missing)
    assert done.exit_code == 2
    assert "demo: no such study folder, and the cluster cannot be asked" in done.stderr
    assert "Traceback" not in done.stderr
    done = CliRunner().invoke(kubectl_hpo, ["--kubeconfig", missing, "plot", "demo"])
    assert done.exit_code == 2 and "demo: the cluster cannot be asked" in done.stderr
    done = CliRunner().invoke(
        kubectl_hpo, ["status", "demo", "--context", "nowhere", "--kubeconfig", missing]
    )
    assert done.exit_code == 2 and "demo: the cluster cannot be asked" in done.stderr


def test_the_plugin_takes_kubectls_flags_before_or_after_the_subcommand() -> None:
    group = ClusterAccess(kubeconfig="k", context="c", namespace="team")
    assert ClusterAccess(namespace="mine").merged(group) == ClusterAccess("k", "c", "mine")
    assert ClusterAccess().merged(group) == group
    listed = CliRunner().invoke(kubectl_hpo, ["--help"])
    assert listed.exit_code == 0 and {"status", "plot", "manifest"} <= set(listed.stdout.split())


def test_the_namespace_is_the_named_contexts_else_the_current_ones_else_default() -> None:
    contexts = [
        {"name": "a", "context": {"cluster": "x", "namespace": "team-a"}},
        {"name": "b", "context": {"cluster": "y"}},
    ]
    assert context_namespace(contexts, contexts[0], None) == "team-a"
    assert context_namespace(contexts, contexts[0], "b") == "default"
    assert context_namespace(contexts, contexts[1], "a") == "team-a"
    assert context_namespace(contexts, None, "gone") == "default"
