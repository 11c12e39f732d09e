"""The Docker engine of the real node, and the images the container suite runs, built as users build them.

* :class:`DockerEngine`: Debian's ``dockerd``, started by the harness when none answers (no systemd
  needed) and stopped again by it; one that was already running is used and left alone.
* :func:`build_images`: a Debian bookworm base made with ``mmdebstrap`` stands in for the
  ``python:*-slim`` base that no registry serves here (the Dockerfiles' ``PYTHON_IMAGE`` build arg);
  ``operator/Dockerfile`` and ``trial_image/Dockerfile`` are built on it exactly as the README says,
  the trial image with the CPU build of torch where this machine's pip has that wheel
  (``TORCH_REQUIREMENT``), else the default CUDA build from the package index.

Images are cached between runs by the content of what they are built from: a tag carries the digest
of the Dockerfile and its context, and a build whose tag exists is skipped.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .binaries import REPO_ROOT
from .procs import ManagedProcess
from .waiting import wait_for

BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates", "passwd")
BASE_REPO = "hpo-test/python"
PAUSE_REPO = "hpo-test/pause"
OPERATOR_REPO = "hpo-operator"
TRIAL_REPO = "hpo-trial"
E2E_TAG = "e2e"
TORCH_VERSION = "2.13.0"
WHEEL_PORT = 38471
# The machine's CA bundle goes into the base image: the package registries are reached through it.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class ImageBuildError(RuntimeError):
    pass


def docker_cli() -> str:
    # Debian's client (docker.io) matches its daemon's API; another client on PATH may not.
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ImageBuildError("docker not found: apt-get install docker.io (scripts/install-cluster-tools)")


def docker(*args: str, timeout: float = 60.0, check: bool = True) -> str:
    done = subprocess.run([docker_cli(), *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise ImageBuildError(f"docker {' '.join(args[:3])}...: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()


class DockerEngine:
    """``dockerd`` for the real node: :meth:`ensure` starts one unless it answers already."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.process: ManagedProcess | None = None

    @staticmethod
    def answers() -> bool:
        try:
            return bool(docker("version", "--format", "{{.Server.Version}}", timeout=10))
        except (ImageBuildError, subprocess.TimeoutExpired, OSError):
            return False

    def ensure(self, timeout: float = 60.0) -> None:
        if self.answers():
            return
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        if not os.access(dockerd, os.X_OK):
            raise ImageBuildError(
                "dockerd not found: apt-get install docker.io (scripts/install-cluster-tools)"
            )
        # cgroupfs: the kubelet is started with the same driver (there is no systemd to delegate to).
        self.process = ManagedProcess(
            "dockerd",
            [dockerd, "--host=unix:///var/run/docker.sock", "--exec-opt=native.cgroupdriver=cgroupfs"],
            self.log_dir / "dockerd.log",
        )

        def up() -> bool:
            if self.process is not None and not self.process.running():
                raise ImageBuildError(f"dockerd exited; log {self.process.log_path}:\n{self.process.tail()}")
            return self.answers()

        wait_for(up, timeout, 0.5, "dockerd to answer")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=20.0)
            self.process = None


@dataclass(frozen=True)
class BuiltImage:
    name: str  # repo:e2e, what the tests put in pod specs
    seconds: float  # 0.0 when it came from the cache
    size_mb: float


@dataclass(frozen=True)
class Images:
    base: BuiltImage
    pause: BuiltImage | None
    operator: BuiltImage
    trial: BuiltImage
    torch: str  # the requirement the trial image was built with


def _digest(paths: Sequence[Path], extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for root in paths:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            if "__pycache__" in f.parts or f.suffix == ".pyc":
                continue
            h.update(str(f.relative_to(REPO_ROOT)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def _exists(image: str) -> bool:
    return bool(docker("images", "-q", image))


def _size_mb(image: str) -> float:
    return round(int(docker("image", "inspect", image, "--format", "{{.Size}}")) / 1e6, 1)


def _tagged(repo: str, digest: str, build: Callable[[str], None], log: Path, tag: str) -> BuiltImage:
    """Build ``repo:<digest>`` unless it exists, then tag it ``repo:<tag>``."""
    versioned, name = f"{repo}:{digest}", f"{repo}:{tag}"
    started = time.monotonic()
    if not _exists(versioned):
        build(versioned)
        if not _exists(versioned):
            raise ImageBuildError(f"building {versioned} left no image; log {log}")
    seconds = 0.0 if time.monotonic() - started < 1.0 else time.monotonic() - started
    docker("tag", versioned, name)
    return BuiltImage(name, round(seconds, 1), _size_mb(name))


def _run_logged(argv: Sequence[str], log: Path, timeout: float, what: str) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        done = subprocess.run(list(argv), stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise ImageBuildError(f"{what} failed (exit {done.returncode}); log {log}:\n{tail}")


def _build_base(image: str, log: Path) -> None:
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise ImageBuildError(
            "mmdebstrap not found: apt-get install mmdebstrap (scripts/install-cluster-tools)"
        )
    with tempfile.TemporaryDirectory(prefix="hpo-base-") as tmp:
        tar = Path(tmp) / "base.tar"
        hook = (
            f'cp {HOST_CA_BUNDLE} "$1/etc/ssl/certs/ca-certificates.crt"'
            if HOST_CA_BUNDLE.is_file()
            else "true"
        )
        _run_logged(
            [
                mmdebstrap,
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                f"--customize-hook={hook}",
                "bookworm",
                str(tar),
                "http://deb.debian.org/debian",
            ],
            log,
            900,
            "mmdebstrap of the base image",
        )
        docker(
            "import",
            "--change", f"ENV PIP_CERT={HOST_CA_BUNDLE}",
            "--change", "ENV LANG=C.UTF-8",
            str(tar),
            image,
            timeout=300,
        )  # fmt: skip


def _build_pause(image: str, pause_binary: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="hpo-pause-") as tmp:
        tar = Path(tmp) / "pause.tar"
        with tarfile.open(tar, "w") as t:
            t.add(pause_binary, arcname="pause")
        docker("import", "--change", 'ENTRYPOINT ["/pause"]', str(tar), image, timeout=120)


def cpu_torch_wheel() -> Path | None:
    """The CPU build of torch for the base image's Python (3.11) where pip on this machine finds one."""
    folders = [Path(p) for p in os.environ.get("PIP_FIND_LINKS", "").split() if p] + [Path("/opt/wheels")]
    for folder in folders:
        if folder.is_dir():
            found = sorted(folder.glob(f"torch-{TORCH_VERSION}+cpu-cp311-cp311-*x86_64.whl"))
            if found:
                return found[0]
    return None


@contextlib.contextmanager
def _served(folder: Path) -> Iterator[int]:
    """Serve ``folder`` on 127.0.0.1 (a build with --network host reaches it); yields the port."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    try:
        # The same URL each time, so that Docker's cache of the torch layer (keyed on the build
        # argument that holds it) survives a change of the trial image's sources.
        server = http.server.ThreadingHTTPServer(("127.0.0.1", WHEEL_PORT), handler)
    except OSError:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _docker_build(context: Path, dockerfile: Path, image: str, args: dict[str, str], log: Path) -> None:
    argv = [docker_cli(), "build", "--network", "host", "-f", str(dockerfile), "-t", image]
    for key, value in args.items():
        argv += ["--build-arg", f"{key}={value}"]
    _run_logged([*argv, str(context)], log, 1500, f"docker build of {image}")


def _build_trial(image: str, base: str, log: Path, torch_index_url: str | None) -> None:
    wheel = None if torch_index_url else cpu_torch_wheel()
    args = {"PYTHON_IMAGE": base}
    if torch_index_url:
        args["TORCH_INDEX_URL"] = torch_index_url
    if wheel is None:
        _docker_build(REPO_ROOT / "trial_image", REPO_ROOT / "trial_image" / "Dockerfile", image, args, log)
        return
    with _served(wheel.parent) as port:
        args["TORCH_REQUIREMENT"] = f"http://127.0.0.1:{port}/{wheel.name.replace('+', '%2B')}"
        _docker_build(REPO_ROOT / "trial_image", REPO_ROOT / "trial_image" / "Dockerfile", image, args, log)


def build_images(
    log_dir: Path,
    *,
    pause_binary: Path | None = None,
    base: str | None = None,
    tag: str = E2E_TAG,
    torch_index_url: str | None = None,
) -> Images:
    """The images of the container suite (and of docs/kind.md), from the cache where their inputs are
    unchanged, tagged ``hpo-operator:<tag>`` and ``hpo-trial:<tag>``.

    ``base``: the Dockerfiles' PYTHON_IMAGE as it is (pulled by Docker where it must be), instead of
    the mmdebstrap base. ``torch_index_url``: the package index of torch (e.g. PyTorch's CPU index),
    instead of this machine's CPU wheel. ``pause_binary``: also a pause image, for the real node."""
    if base is None:
        base_digest = hashlib.sha256(
            ",".join(BASE_PACKAGES).encode()
            + (HOST_CA_BUNDLE.read_bytes() if HOST_CA_BUNDLE.is_file() else b"")
        ).hexdigest()[:12]
        base_image = _tagged(
            BASE_REPO,
            base_digest,
            functools.partial(_build_base, log=log_dir / "base-image.log"),
            log_dir,
            tag,
        )
    else:
        base_digest, base_image = hashlib.sha256(base.encode()).hexdigest()[:12], BuiltImage(base, 0.0, 0.0)
    pause = None
    if pause_binary is not None:
        pause = _tagged(
            PAUSE_REPO,
            hashlib.sha256(pause_binary.read_bytes()).hexdigest()[:12],
            functools.partial(_build_pause, pause_binary=pause_binary),
            log_dir,
            tag,
        )
    op_inputs = [
        REPO_ROOT / "operator" / "Dockerfile",
        REPO_ROOT / "pyproject.toml",
        REPO_ROOT / "README.md",
        REPO_ROOT / "operator" / "hpo_operator",
        REPO_ROOT / "trial_image" / "hpo_trial",
    ]
    op_log = log_dir / "operator-image.log"
    operator = _tagged(
        OPERATOR_REPO,
        _digest(op_inputs, base_image.name + base_digest),
        lambda image: _docker_build(
            REPO_ROOT, REPO_ROOT / "operator" / "Dockerfile", image, {"PYTHON_IMAGE": base_image.name}, op_log
        ),
        op_log,
        tag,
    )
    wheel = None if torch_index_url else cpu_torch_wheel()
    torch = wheel.name if wheel else f"torch=={TORCH_VERSION} from {torch_index_url or 'the package index'}"
    trial_log = log_dir / "trial-image.log"
    trial = _tagged(
        TRIAL_REPO,
        _digest(
            [REPO_ROOT / "trial_image" / "Dockerfile", REPO_ROOT / "trial_image" / "hpo_trial"],
            base_digest + torch,
        ),
        functools.partial(_build_trial, base=base_image.name, log=trial_log, torch_index_url=torch_index_url),
        trial_log,
        tag,
    )
    return Images(base=base_image, pause=pause, operator=operator, trial=trial, torch=torch)
