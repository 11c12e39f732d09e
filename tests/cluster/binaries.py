"""Where the control-plane binaries come from.

Order: ``$HPO_K8S_BIN_DIR`` (a folder holding kube-apiserver, kube-controller-manager and
kube-scheduler), else the tarball in ``<repo>/../shared/k8s/`` unpacked once into the cache folder,
else the cache folder as ``scripts/build-kube-binaries`` leaves it, else an error that says how to
get them. etcd comes from the Debian package ``etcd-server``.

Only the standard library: ``python3 tests/cluster/binaries.py`` prints the folder the tests would use
(unpacking the tarball if that is where it comes from) or the error, exit 1. scripts/build-kube-binaries
asks it before building.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

K8S_VERSION = "1.20.2"
TARBALL_NAME = f"kube-control-plane-{K8S_VERSION}-linux-amd64.tar.xz"
KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
REPO_ROOT = Path(__file__).resolve().parents[2]


class MissingBinaryError(RuntimeError):
    """A piece of the control plane cannot be found; the message says how to get it."""


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hpo-operator"


def shared_k8s_dir() -> Path:
    return REPO_ROOT.parent / "shared" / "k8s"


def _has_all(folder: Path) -> bool:
    return all(os.access(folder / name, os.X_OK) for name in KUBE_BINARIES)


def _tarball_digest(tarball: Path) -> str:
    # Keyed on size+mtime rather than a full sha256 so a warm start does not re-read 60 MB.
    st = tarball.stat()
    return hashlib.sha256(f"{tarball.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]


def _unpack(tarball: Path) -> Path:
    target = cache_root() / f"k8s-{K8S_VERSION}"
    stamp = target / ".source"
    digest = _tarball_digest(tarball)
    if _has_all(target) and stamp.is_file() and stamp.read_text().strip() == digest:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Unpack beside the target and rename, so concurrent sessions never see half a binary.
    staging = Path(tempfile.mkdtemp(prefix=f".k8s-{K8S_VERSION}-", dir=target.parent))
    staging.chmod(0o755)
    try:
        subprocess.run(["tar", "-xJf", str(tarball), "-C", str(staging)], check=True)
        if not _has_all(staging):
            raise MissingBinaryError(f"{tarball} does not contain {', '.join(KUBE_BINARIES)}")
        (staging / ".source").write_text(digest + "\n")
        old = None
        if target.exists():
            old = target.with_name(target.name + f".old-{os.getpid()}")
            os.rename(target, old)
        try:
            os.rename(staging, target)
        except OSError:
            # Another session won the race; its copy is as good as ours.
            if not _has_all(target):
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def kube_bin_dir() -> Path:
    env = os.environ.get("HPO_K8S_BIN_DIR")
    if env:
        folder = Path(env)
        if _has_all(folder):
            return folder
        tarball = folder / TARBALL_NAME
        if tarball.is_file():
            return _unpack(tarball)
        raise MissingBinaryError(
            f"HPO_K8S_BIN_DIR={env} holds neither {', '.join(KUBE_BINARIES)} nor {TARBALL_NAME}: "
            "unset it to use the cache that scripts/build-kube-binaries fills"
        )
    tarball = shared_k8s_dir() / TARBALL_NAME
    if tarball.is_file():
        return _unpack(tarball)
    cached = cache_root() / f"k8s-{K8S_VERSION}"
    if _has_all(cached):
        return cached
    raise MissingBinaryError(
        f"kube-apiserver, kube-controller-manager and kube-scheduler {K8S_VERSION} not found "
        f"(HPO_K8S_BIN_DIR is unset; looked for {shared_k8s_dir() / TARBALL_NAME} and in {cached}): "
        "run scripts/build-kube-binaries (builds them from Debian's kubernetes source "
        "package into the cache, 8-10 minutes on 2 cores, once), or set HPO_K8S_BIN_DIR to a folder that "
        f"holds them or {TARBALL_NAME}; HPO_SKIP_E2E=1 skips the e2e tests instead"
    )


NODE_BINARIES = ("kubelet", "kube-proxy", "pause")
NODE_TARBALL_NAME = f"kube-node-{K8S_VERSION}-linux-amd64.tar.xz"


def node_bin_dir() -> Path:
    """The folder of kubelet (oom_score_adj 0), kube-proxy and a static pause, as
    scripts/build-kube-binaries leaves it (from ../shared/k8s's tarball, or built from source)."""
    cached = cache_root() / f"k8s-node-{K8S_VERSION}"
    if all(os.access(cached / name, os.X_OK) for name in NODE_BINARIES):
        return cached
    raise MissingBinaryError(
        f"kubelet, kube-proxy and pause {K8S_VERSION} not found in {cached}: run "
        "scripts/build-kube-binaries (unpacks them from ../shared/k8s, else builds them from Debian's "
        "kubernetes source package, 8-10 minutes on 2 cores, once); "
        "HPO_SKIP_E2E=1 skips the e2e tests instead"
    )


def find_binaries() -> Binaries:
    etcd = shutil.which("etcd")
    if etcd is None:
        raise MissingBinaryError(
            "etcd not found on PATH: run scripts/install-cluster-tools (Debian package etcd-server); "
            "HPO_SKIP_E2E=1 skips the e2e tests instead"
        )
    folder = kube_bin_dir()
    return Binaries(
        etcd=Path(etcd),
        kube_apiserver=folder / "kube-apiserver",
        kube_controller_manager=folder / "kube-controller-manager",
        kube_scheduler=folder / "kube-scheduler",
    )


if __name__ == "__main__":
    try:
        print(kube_bin_dir())
    except (MissingBinaryError, OSError, subprocess.CalledProcessError) as err:
        print(err, file=sys.stderr)
        sys.exit(1)
