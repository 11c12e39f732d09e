"""`hpo plot STUDY` and the kubectl plugin (`kubectl hpo status|plot`) against a study the operator ran
on the local cluster: the commands as subprocesses, with the cluster's kubeconfig picked by
--kubeconfig, $KUBECONFIG and --context, as a person runs them.

kubectl finds the plugin as ``kubectl-hpo`` on PATH: pip puts it beside the venv's python.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hpo_operator.kube.curves import cluster_curves
from hpo_operator.kube.reading import ClusterAccess, read_study
from hpo_operator.kube.verdict import counted_reports
from hpo_operator.plot import CURVES_XLABEL, TIMELINE_XLABEL, study_figure
from tests.cluster.cluster import LocalCluster
from tests.cluster.rest import Kube
from tests.support.e2e_study import create_study, study_manifest, trials_of, wait_phase
from tests.support.figures import PNG_SIZE, png_size, trial_lines
from tests.support.hpo_cli import environment, hpo
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.e2e

STUDY = "curves"


def plugin_executable() -> Path:
    here = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("kubectl-hpo", path=here)
    assert found, "kubectl-hpo is not installed: `pip install -e .` puts it beside python (pyproject.toml)"
    return Path(found)


def kubectl(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kubectl", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60)


def two_contexts(cluster: LocalCluster, namespace: str, path: Path) -> str:
    """A kubeconfig whose current context is a cluster that is not there, and whose other context,
    returned, is the local cluster with ``namespace`` as its namespace."""
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    context = config["contexts"][0]
    context["context"]["namespace"] = namespace
    config["clusters"].append({"name": "nowhere", "cluster": {"server": "https://127.0.0.1:1"}})
    config["contexts"].append(
        {"name": "elsewhere", "context": {"cluster": "nowhere", "user": context["context"]["user"]}}
    )
    config["current-context"] = "elsewhere"
    path.write_text(yaml.safe_dump(config))
    return str(context["name"])


def test_hpo_plot_and_kubectl_hpo_show_a_study_of_the_cluster(
    operator: OperatorProcess, kube: Kube, namespace: str, cluster: LocalCluster, tmp_path: Path
) -> None:
    create_study(kube, namespace, study_manifest(STUDY, deadline="20s"))
    study = wait_phase(kube, namespace, STUDY, {"Succeeded", "Failed"}, 60)
    assert study["status"]["phase"] == "Succeeded", study["status"]
    trials = trials_of(kube, namespace, STUDY)
    # The trials with a report that counts: a report a trial stopped at the deadline sends after the
    # operator's verdict does not (verdict.py), and is not drawn, as in a local study.
    reported = [t["metadata"]["name"] for t in trials if counted_reports(t)]
    assert len(reported) >= 4 and any(t["status"].get("phase") == "Pruned" for t in trials), reported
    kubeconfig = str(cluster.kubeconfig)

    # hpo plot STUDY: the PNG.
    png = tmp_path / "out.png"
    done = hpo("plot", STUDY, "-n", namespace, "--kubeconfig", kubeconfig, "-o", str(png))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(png) and png_size(png) == PNG_SIZE

    # What it draws, read as the command reads it: a line per trial that reported, the budget.
    found = read_study(ClusterAccess(kubeconfig=kubeconfig, namespace=namespace), STUDY)
    assert found.study is not None
    figure = study_figure(cluster_curves(found.study, found.trials, now=time.time()))
    curves, timeline = figure.axes
    assert (curves.get_xlabel(), curves.get_ylabel(), timeline.get_xlabel()) == (
        CURVES_XLABEL,
        "accuracy (max)",
        TIMELINE_XLABEL,
    )
    assert sorted(trial_lines(figure)) == sorted(f"trial:{name}" for name in reported)
    started = [t for t in trials if (t.get("status") or {}).get("startedAt")]
    assert len(timeline.patches) == len(started)  # a bar per trial that started
    legend = [t.get_text() for t in timeline.get_legend().get_texts()]
    budget = study["status"]["budget"]
    assert f"deadline ({budget['budgetSeconds']:.0f}s budget)" in legend, legend
    best = study["status"]["best"]
    assert any(t.get_text().startswith(f"best: {best['trial']} ") for t in curves.get_legend().get_texts())

    # kubectl finds the plugin on PATH and runs it with kubectl's flags.
    plugin = plugin_executable()
    env = environment(PATH=f"{plugin.parent}{os.pathsep}{os.environ['PATH']}")
    listed = kubectl(["plugin", "list"], env, tmp_path)
    assert str(plugin) in listed.stdout, listed.stdout + listed.stderr
    status = kubectl(["hpo", "status", STUDY, "-n", namespace, "--kubeconfig", kubeconfig], env, tmp_path)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0] == f"HPOStudy {namespace}/{STUDY}: Succeeded", lines
    assert f"  best: {best['trial']} accuracy {best['value']:g} at resource {best['resource']:g}" in lines
    listed_trials = {line.split()[0] for line in lines if line.startswith(f"  {STUDY}-")}
    assert listed_trials == {t["metadata"]["name"] for t in trials}

    # --context picks the context, and the namespace is that context's; the plot goes to ./STUDY.png.
    config = tmp_path / "kubeconfig"
    context = two_contexts(cluster, namespace, config)
    with_config = env | {"KUBECONFIG": str(config)}
    plotted = kubectl(["hpo", "plot", STUDY, "--context", context], with_config, tmp_path)
    assert plotted.returncode == 0, plotted.stderr
    assert png_size(tmp_path / f"{STUDY}.png") == PNG_SIZE
    # The current context's cluster is not there: a one-line reason, exit 2.
    elsewhere = kubectl(["hpo", "status", STUDY], with_config, tmp_path)
    assert elsewhere.returncode == 2 and "the cluster cannot be asked" in elsewhere.stderr, elsewhere.stderr
    assert "Traceback" not in elsewhere.stderr
