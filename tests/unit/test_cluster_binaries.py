"""Where tests/cluster/binaries.py finds the control plane: $HPO_K8S_BIN_DIR, the shared tarball, the cache
that scripts/build-kube-binaries fills, else an error that says how to get it or skip."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster import binaries
from tests.support.cluster_binaries import fake_binaries


@pytest.fixture
def no_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No ../shared/k8s and no $HPO_K8S_BIN_DIR; the cache root under tmp_path (returned)."""
    monkeypatch.setattr(binaries, "shared_k8s_dir", lambda: tmp_path / "no-shared")
    monkeypatch.delenv("HPO_K8S_BIN_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "hpo-operator"


def test_the_built_cache_is_found_without_the_shared_tarball(no_shared: Path) -> None:
    built = fake_binaries(no_shared / f"k8s-{binaries.K8S_VERSION}")
    assert binaries.kube_bin_dir() == built


def test_hpo_k8s_bin_dir_comes_first(
    no_shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_binaries(no_shared / f"k8s-{binaries.K8S_VERSION}")
    mine = fake_binaries(tmp_path / "mine")
    monkeypatch.setenv("HPO_K8S_BIN_DIR", str(mine))
    assert binaries.kube_bin_dir() == mine


def test_missing_binaries_say_how_to_build_them_or_skip(no_shared: Path) -> None:
    fake_binaries(no_shared / f"k8s-{binaries.K8S_VERSION}")
    (no_shared / f"k8s-{binaries.K8S_VERSION}" / "kube-scheduler").unlink()
    with pytest.raises(binaries.MissingBinaryError) as err:
        binaries.kube_bin_dir()
    assert "scripts/build-kube-binaries" in str(err.value)
    assert "HPO_SKIP_E2E=1" in str(err.value)
