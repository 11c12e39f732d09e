"""Start one container process: a private mount namespace with the pod's volumes, then exec.

Run by the node agent as ``python -I -S sandbox.py SPEC.json`` (standard library only, so it starts
in milliseconds). SPEC holds ``argv``, ``env``, ``cwd``, ``mounts`` ([{source, target, readOnly}]),
``image`` (folders the container's programs live in, kept visible under any mount) and ``parent``
(the agent's pid). The process then becomes the container's command, keeping the pid
that the agent reports and signals.
"""

import ctypes
import json
import os
import signal
import sys

CLONE_NEWNS = 0x00020000
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1


def _fail(message: str, code: int = 127) -> None:
    sys.stderr.write(f"process-kubelet: {message}\n")
    sys.stderr.flush()
    os._exit(code)


def _mount(libc: ctypes.CDLL, source: "str | None", target: str, flags: int) -> None:
    src = source.encode() if source is not None else None
    if libc.mount(src, target.encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        _fail(f"mount {source} on {target}: {os.strerror(err)}")


def _covers(mount_target: str, path: str) -> bool:
    """Whether a mount on ``mount_target`` hides ``path`` (the same folder or one above it)."""
    target = os.path.normpath(mount_target)
    return os.path.commonpath([target, os.path.normpath(path)]) == target


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    libc = ctypes.CDLL(None, use_errno=True)
    # The container dies with its node agent, as containers die with a node.
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != spec["parent"]:
        _fail("node agent gone before start")
    mounts = spec.get("mounts") or []
    if mounts:
        if libc.unshare(CLONE_NEWNS) != 0:
            _fail(f"unshare(CLONE_NEWNS): {os.strerror(ctypes.get_errno())}")
        # Nothing mounted here may leak back into the host's namespace.
        _mount(libc, None, "/", MS_REC | MS_PRIVATE)
        # Every source is opened before anything is mounted: a mount on /tmp must not hide the
        # sources of the mounts after it (they live in the pod's folder, under the state folder),
        # as a real kubelet's volumes under /var/lib/kubelet are never hidden by a container's mounts.
        fds = []
        for m in mounts:
            try:
                fds.append(os.open(m["source"], os.O_PATH | os.O_CLOEXEC))
            except OSError as e:
                _fail(f"mount {m['source']} on {m['target']}: {e.strerror}")
        # The "image" (the project's folder with its venv, and the Python it was made from) must
        # stay visible when a volume is mounted over a folder above it (an emptyDir on /tmp while
        # the project lives under /tmp): each such folder is opened now and bound back afterwards.
        targets = [m["target"] for m in mounts]
        image = [
            (path, os.open(path, os.O_PATH | os.O_CLOEXEC))
            for path in spec.get("image") or []
            if os.path.isdir(path) and any(_covers(t, path) for t in targets)
        ]
        for m, fd in zip(mounts, fds, strict=True):
            source, target = f"/proc/self/fd/{fd}", m["target"]
            if os.path.isdir(source):
                os.makedirs(target, exist_ok=True)
            elif not os.path.exists(target):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                open(target, "a").close()
            _mount(libc, source, target, MS_BIND | MS_REC)
            if m.get("readOnly"):
                _mount(libc, None, target, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC)
        for path, fd in image:
            os.makedirs(path, exist_ok=True)
            _mount(libc, f"/proc/self/fd/{fd}", path, MS_BIND | MS_REC)
    cwd = spec.get("cwd")
    if cwd:
        os.makedirs(cwd, exist_ok=True)
        os.chdir(cwd)
    argv = spec["argv"]
    try:
        os.execvpe(argv[0], argv, spec["env"])
    except OSError as e:
        _fail(f"exec {argv[0]}: {e.strerror}")


if __name__ == "__main__":
    main()
