"""The Helm chart as `helm template` renders it, and `helm` against a test cluster. helm (and
promtool) come from scripts/install-cluster-tools: a missing tool fails the test unless
HPO_SKIP_E2E=1 asked to skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.cluster import LocalCluster
from tests.cluster.fixtures import e2e_required

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "hpo-operator"
RELEASE, NAMESPACE = "hpo-operator", "hpo-system"
Obj = dict[str, Any]


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (scripts/install-cluster-tools installs it)"
        if e2e_required():
            pytest.fail(message)
        pytest.skip(message)
    return path


def helm(cluster: LocalCluster, *args: str, timeout: float = 180) -> str:
    """``helm ARGS`` as the cluster's admin; its output, or an AssertionError with what it said."""
    done = subprocess.run(
        [tool("helm"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **cluster.env()},
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)}: {done.stdout}{done.stderr}")
    return done.stdout


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


@cache
def _template(
    sets: tuple[str, ...],
    release: str,
    api_versions: tuple[str, ...],
    include_crds: bool,
    kube_version: str | None = None,
) -> tuple[int, str, str]:
    args = [tool("helm"), "template", release, str(CHART), "--namespace", NAMESPACE]
    if kube_version is not None:
        args += ["--kube-version", kube_version]
    for value in sets:
        args += ["--set", value]
    for api in api_versions:
        args += ["--api-versions", api]
    if include_crds:
        args.append("--include-crds")
    done = run(*args)
    return done.returncode, done.stdout, done.stderr


def render(
    *sets: str,
    release: str = RELEASE,
    api_versions: Iterable[str] = (),
    include_crds: bool = False,
    kube_version: str | None = None,
) -> list[Obj]:
    """The chart rendered by `helm template`; ``kube_version``: the cluster's Kubernetes (default:
    helm's own), which picks the FlowSchema's API version."""
    code, out, err = _template(tuple(sets), release, tuple(api_versions), include_crds, kube_version)
    assert code == 0, err
    return [doc for doc in yaml.safe_load_all(out) if doc]


def render_error(*sets: str) -> str:
    code, _, err = _template(tuple(sets), RELEASE, (), False)
    assert code != 0, f"helm template {sets} succeeded"
    return err
