"""``python -m tests.cluster up|down|env|status|images`` (scripts/local-cluster): the local cluster for
people, and the images of the real-node suite (also what scripts/kind-e2e loads into kind).

``up`` starts a supervisor in the background that brings the cluster up and holds it until ``down``;
if the supervisor dies, its control plane and agents die with it (they are started with a parent-death
signal). State, kubeconfig and logs live in one folder, by default ``<repo>/.cache/local-cluster``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .binaries import REPO_ROOT
from .cluster import STATE_FILE, ClusterSpec, LocalCluster
from .procs import pid_alive, wait_pid_gone

DEFAULT_DIR = REPO_ROOT / ".cache" / "local-cluster"
PID_FILE = "supervisor.pid"


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.dir or os.environ.get("HPO_LOCAL_CLUSTER_DIR") or DEFAULT_DIR).resolve()


def _supervisor_pid(root: Path) -> int | None:
    try:
        pid = int((root / PID_FILE).read_text())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def _print_env(root: Path) -> None:
    print(f"export KUBECONFIG={root / 'admin.kubeconfig'}")


def cmd_up(args: argparse.Namespace) -> int:
    root = _state_dir(args)
    if _supervisor_pid(root) is not None and (root / STATE_FILE).exists():
        print(f"# already running ({root})", file=sys.stderr)
        _print_env(root)
        return 0
    if _supervisor_pid(root) is not None:
        print(f"a supervisor is still starting or stopping in {root}; run `down` first", file=sys.stderr)
        return 1
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    argv = [sys.executable, "-m", "tests.cluster", "serve", "--dir", str(root),
            "--nodes", str(args.nodes), "--gpus", str(args.gpus)]  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    with open(root / "supervisor.log", "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            cwd=REPO_ROOT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + args.timeout
    while not (root / STATE_FILE).exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
            tail = (root / "supervisor.log").read_text(errors="replace").splitlines()[-30:]
            print("local cluster failed to start:\n" + "\n".join(tail), file=sys.stderr)
            return 1
        time.sleep(0.2)
    state = json.loads((root / STATE_FILE).read_text())
    print(f"# local cluster up in {state['bring_up_s']}s: {state['server']}, state and logs in {root}",
          file=sys.stderr)  # fmt: skip
    _print_env(root)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    root = _state_dir(args)
    pid = _supervisor_pid(root)
    if pid is None:
        print(f"# no local cluster running in {root}", file=sys.stderr)
    else:
        started = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        if not wait_pid_gone(pid, 60):
            print(f"supervisor {pid} did not stop in 60s", file=sys.stderr)
            return 1
        print(f"# local cluster down in {time.monotonic() - started:.1f}s", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    root = _state_dir(args)
    if not (root / STATE_FILE).exists():
        print(f"no local cluster running in {root}: run `scripts/local-cluster up`", file=sys.stderr)
        return 1
    _print_env(root)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    root = _state_dir(args)
    if _supervisor_pid(root) is None or not (root / STATE_FILE).exists():
        print(f"not running ({root})")
        return 1
    print((root / STATE_FILE).read_text(), end="")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    root = _state_dir(args)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    (root / PID_FILE).write_text(str(os.getpid()))
    cluster = LocalCluster(ClusterSpec(nodes=args.nodes, gpus_per_node=args.gpus), root=root)
    try:
        cluster.up()
        print(f"up in {cluster.bring_up_s:.1f}s", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        print(f"down in {cluster.down():.1f}s", flush=True)
        (root / PID_FILE).unlink(missing_ok=True)
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    """Build the operator and trial images as the real-node suite does (images.py)."""
    from .images import DockerEngine, ImageBuildError, build_images

    log_dir = _state_dir(args).parent / "image-builds"
    engine = DockerEngine(log_dir)
    try:
        engine.ensure()
        images = build_images(log_dir, base=args.base, tag=args.tag, torch_index_url=args.torch_index_url)
    except ImageBuildError as err:
        print(err, file=sys.stderr)
        return 1
    finally:
        if not args.keep_dockerd:
            engine.stop()
    for image in (images.operator, images.trial):
        print(f"{image.name}\t{image.size_mb:.0f} MB\tbuilt in {image.seconds:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="local-cluster", description=__doc__)
    parser.add_argument("--dir", help=f"state folder (default $HPO_LOCAL_CLUSTER_DIR or {DEFAULT_DIR})")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start in the background; prints `export KUBECONFIG=...`")
    serve = sub.add_parser("serve", help="run in the foreground until SIGTERM (what `up` starts)")
    for p in (up, serve):
        p.add_argument("--nodes", type=int, default=2, help="GPU nodes (default 2)")
        p.add_argument("--gpus", type=int, default=2, help="nvidia.com/gpu per node (default 2)")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness")
    down = sub.add_parser("down", help="stop every process and delete the state folder")
    down.add_argument("--keep", action="store_true", help="keep the state folder (logs) after stopping")
    sub.add_parser("env", help="print `export KUBECONFIG=...` for the running cluster")
    sub.add_parser("status", help="print the running cluster's pids, logs and server")
    images = sub.add_parser("images", help="build hpo-operator:TAG and hpo-trial:TAG from the Dockerfiles")
    images.add_argument("--tag", default="e2e", help="the images' tag (default e2e)")
    images.add_argument("--base", help="PYTHON_IMAGE as it is (default: a Debian base made with mmdebstrap)")
    images.add_argument("--torch-index-url", help="torch's package index (default: this machine's CPU wheel)")
    images.add_argument("--keep-dockerd", action="store_true", help="leave a dockerd this started running")
    for p in (up, serve, down):
        p.add_argument("--dir", help=argparse.SUPPRESS, default=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    handlers = {
        "up": cmd_up,
        "down": cmd_down,
        "env": cmd_env,
        "status": cmd_status,
        "serve": cmd_serve,
        "images": cmd_images,
    }
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
