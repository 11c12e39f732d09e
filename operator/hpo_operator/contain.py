"""Keeps a local study's processes inside it: no process a trial starts outlives the study.

Each trial runs in a session of its own, and a signal to its process group reaches the children
that stay in it. A child may leave the group (``setsid()``, a daemon's double fork) and ignore
SIGTERM, and when the runner itself dies (SIGKILL, the OOM killer) nothing is left to signal. On
Linux three things close those gaps:

* **A marker.** Every trial gets ``HPO_RUN_TOKEN`` (random, one per study) in its environment;
  its descendants inherit it, and ``/proc/PID/environ`` shows it for as long as they live.
* **Tracking.** The runner becomes a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``), so a
  process whose parent exits is reparented to the runner, not to init, and the runner scans
  ``/proc``: a process belongs to a trial when its parent does (remembered by pid and start time,
  so it still counts once the parent is gone) or when it carries the study's marker. Stopping a
  trial signals its process group and every process that belongs to it; once a trial's process
  has ended, whatever it left behind is killed, including processes found later.
* **A watchdog.** This module, run as a script, in a session of its own. The runner tells it each
  process it tracks through a pipe; when the pipe closes (the runner ended, however it ended) the
  watchdog kills whatever of the study is left, marked or told, and if ``study.json`` still says
  ``Running`` it records that the study was interrupted.

Not found: a process that clears its environment and leaves its trial's process tree (a double
fork) within one scan (``SCAN_SECONDS``) of its start, and processes of another user (a setuid
program), which cannot be signalled anyway. Without ``/proc`` (not Linux) only process groups are
signalled, by the runner and by the watchdog.

Only the standard library is used here: the watchdog runs this file with ``python -I -S``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOKEN_VARIABLE = "HPO_RUN_TOKEN"
TRIAL_VARIABLE = "HPO_TRIAL"
# Between two periodic scans of /proc: each reads the stat of the study's processes and of new
# ones, and the environment of new ones.
SCAN_SECONDS = 0.5
# Every this many periodic scans, and at every forced one, the stat of every process is read
# again: a pid taken for a process known not to be the study's may since have been reused.
FULL_SCAN_EVERY = 10
# How long closing waits for killed processes to go.
CLOSE_TIMEOUT_SECONDS = 10.0
# How long the watchdog keeps killing after the runner is gone (a process may fork meanwhile).
SWEEP_SECONDS = 5.0
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
_PROC = Path("/proc")

Key = tuple[int, int]  # (pid, start time in clock ticks since boot): a process, whatever pid reuse


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    start: int
    zombie: bool

    @property
    def key(self) -> Key:
        return (self.pid, self.start)


def has_proc() -> bool:
    return (_PROC / "self" / "stat").exists()


def read_proc(pid: int) -> Proc | None:
    """A process as /proc/PID/stat shows it; None when it is gone."""
    try:
        data = (_PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces and parentheses itself.
    fields = data[data.rindex(b")") + 2 :].split()
    # fields[0] is field 3 (state), fields[1] field 4 (ppid), fields[19] field 22 (start time).
    return Proc(pid, int(fields[1]), int(fields[19]), fields[0] in (b"Z", b"X"))


def processes() -> dict[int, Proc]:
    """Every process on the machine, by pid."""
    found = {}
    for entry in os.listdir(_PROC):
        if entry.isdigit() and (proc := read_proc(int(entry))) is not None:
            found[proc.pid] = proc
    return found


def start_time(pid: int) -> int | None:
    proc = read_proc(pid)
    return None if proc is None else proc.start


def process_alive(pid: int, start: int | None = None) -> bool:
    """Whether process ``pid`` runs (with start time ``start``, when given and /proc exists)."""
    if has_proc():
        proc = read_proc(pid)
        return proc is not None and not proc.zombie and (start is None or proc.start == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def marked_trial(pid: int, token: str) -> str | None:
    """The trial a process belongs to by its environment: its ``HPO_TRIAL`` when it carries the
    study's token ("" without a trial name), else None."""
    try:
        entries = (_PROC / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:  # gone, or another user's
        return None
    if f"{TOKEN_VARIABLE}={token}".encode() not in entries:
        return None
    prefix = f"{TRIAL_VARIABLE}=".encode()
    names = [e[len(prefix) :] for e in entries if e.startswith(prefix)]
    return names[0].decode(errors="replace") if names else ""


def _prctl(option: int, value: Any) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(option, value, 0, 0, 0))


def set_child_subreaper(on: bool) -> bool | None:
    """Makes this process a child subreaper (or not); returns the previous setting, None when the
    system has no such thing."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        previous = ctypes.c_int(0)
        if _prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(previous)) != 0:
            return None
        if _prctl(_PR_SET_CHILD_SUBREAPER, int(on)) != 0:
            return None
    except (OSError, AttributeError):  # no libc prctl
        return None
    return bool(previous.value)


# --- the runner's side -------------------------------------------------------------------------


class Containment:
    """The processes of one study's trials, as the runner sees them.

    ``environment()`` goes into every trial's environment, ``add`` follows each start, ``scan``
    runs in the runner's loop, ``terminate``/``kill`` stop a trial, and ``close`` ends it all.
    """

    def __init__(self, token: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.token = token or secrets.token_hex(12)
        self.clock = clock
        self.proc = has_proc()
        self.me = os.getpid()
        self.roots: dict[str, Proc] = {}  # trial -> the process the runner started (its latest run)
        self.running: set[str] = set()  # trials whose process the runner has not seen end
        self.owner: dict[Key, str] = {}  # every process known to belong to a trial
        self.condemned: set[Key] = set()  # to be killed on sight: left behind by an ended trial
        self.strangers: set[Key] = set()  # looked at once: not of this study
        self.live: set[Key] = set()  # the study's processes that ran (not zombies) at the last scan
        self._seen: dict[int, Proc] = {}  # every process at the last scan
        self._scans = 0
        self.subreaper = False
        self._previous_subreaper: bool | None = None
        self.watchdog: subprocess.Popen[bytes] | None = None
        self._last_scan = -math.inf

    def environment(self) -> dict[str, str]:
        return {TOKEN_VARIABLE: self.token}

    # --- start and end ---

    def start(self, study_file: Path | None = None) -> None:
        """Before the first trial: become a subreaper and start the watchdog."""
        previous = set_child_subreaper(True)
        if previous is not None:
            self._previous_subreaper, self.subreaper = previous, True
        command = [sys.executable, "-I", "-S", str(Path(__file__).resolve()), "watch", self.token]
        command += [str(self.me), str(study_file.resolve()) if study_file is not None else ""]
        try:
            self.watchdog = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # out of reach of the terminal's ^C and of the runner's group
            )
        except OSError:
            self.watchdog = None  # no protection against the runner's death, the rest still holds
            return
        assert self.watchdog.stdin is not None
        # A watchdog that stops reading must not block the runner: what does not fit is dropped
        # (the marker still finds those processes).
        os.set_blocking(self.watchdog.stdin.fileno(), False)

    def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> list[int]:
        """Kills every process of the study that is left and waits (up to ``timeout``) until none
        runs; then stops the watchdog and gives the subreaper role back. Returns the pids that
        would not go."""
        for trial in list(self.running):
            self.kill(trial)
        left = self._sweep(timeout)
        self._stop_watchdog()
        if self.subreaper:
            set_child_subreaper(bool(self._previous_subreaper))
            self.subreaper = False
        return left

    def _sweep(self, timeout: float) -> list[int]:
        if not self.proc:
            return []  # each trial's group was killed when it ended (kill): nothing more to find
        until = self.clock() + timeout
        while True:
            self.scan(force=True)
            left = [pid for pid, start in self.live]
            if not left or self.clock() >= until:
                return left
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def _stop_watchdog(self) -> None:
        watchdog, self.watchdog = self.watchdog, None
        if watchdog is None:
            return
        self._tell_to(watchdog, "done\n")
        assert watchdog.stdin is not None
        with contextlib.suppress(OSError):
            watchdog.stdin.close()
        try:
            watchdog.wait(timeout=SWEEP_SECONDS + 5)
        except subprocess.TimeoutExpired:
            watchdog.kill()
            watchdog.wait()

    # --- trials ---

    def add(self, trial: str, pid: int) -> None:
        """The runner started ``pid`` (in a session of its own) for ``trial``."""
        proc = read_proc(pid) if self.proc else None
        root = proc or Proc(pid, self.me, 0, False)
        self.roots[trial] = root
        self.running.add(trial)
        if proc is not None:
            self.owner[root.key] = trial
        self._tell(f"group {pid}\nprocess {root.pid} {root.start}\n")

    def members(self, trial: str) -> list[int]:
        """The live processes that belong to ``trial``, as of the last scan."""
        return sorted(key[0] for key, owner in self.owner.items() if owner == trial and key in self.live)

    def terminate(self, trial: str) -> None:
        """SIGTERM to the trial's process group and every process that belongs to it."""
        self._signal(trial, signal.SIGTERM)

    def kill(self, trial: str) -> None:
        """SIGKILL to the trial's process group and every process that belongs to it, and to any
        found later: the trial's process has ended or is being killed."""
        self.running.discard(trial)
        self._signal(trial, signal.SIGKILL)
        self.condemned |= {key for key, owner in self.owner.items() if owner == trial}
        root = self.roots.get(trial)
        if root is not None:
            # Its group is dead; once empty its number may be reused, so the watchdog forgets it.
            self._tell(f"ended {root.pid}\n")

    def _signal(self, trial: str, signum: int) -> None:
        root = self.roots.get(trial)
        if root is not None:
            with contextlib.suppress(OSError):
                os.killpg(root.pid, signum)
        if not self.proc:
            return
        self.scan(force=True)  # this trial's processes as they are now, new ones included
        for (pid, _), owner in list(self.owner.items()):
            if owner == trial and pid != self.me:
                with contextlib.suppress(OSError):
                    os.kill(pid, signum)

    # --- scanning ---

    def scan(self, force: bool = False) -> bool:
        """Finds the processes of the study, kills those left behind by ended trials, and reaps
        the ones reparented to the runner. Unless ``force``d, at most once per SCAN_SECONDS.
        True when it found processes of the study it did not know."""
        if not self.proc:
            return False
        now = self.clock()
        if not force and now - self._last_scan < SCAN_SECONDS:
            return False
        self._last_scan = now
        full = force or self._scans % FULL_SCAN_EVERY == 0
        self._scans += 1
        procs = self._processes(full)
        present = {p.key for p in procs.values()}
        self.owner = {k: t for k, t in self.owner.items() if k in present}
        self.condemned &= present
        self.strangers &= present
        new = [p for p in procs.values() if p.key not in self.owner and p.key not in self.strangers]
        found: list[Proc] = []
        for p in new:
            trial = marked_trial(p.pid, self.token)
            if trial is not None and p.pid != self.me:
                self._own(p, trial, procs, found)
        # Children of the study's processes belong to the same trial (their environment may have
        # been cleared); parents first, so a whole new subtree is found in one scan.
        remaining = [p for p in new if p.key not in self.owner]
        while True:
            adopted = [
                p for p in remaining if (parent := procs.get(p.ppid)) is not None and parent.key in self.owner
            ]
            if not adopted:
                break
            for p in adopted:
                self._own(p, self.owner[procs[p.ppid].key], procs, found)
            remaining = [p for p in remaining if p.key not in self.owner]
        self.strangers.update(p.key for p in remaining)
        if found:
            self._tell("".join(f"process {p.pid} {p.start}\n" for p in found))
        self.live = {p.key for p in procs.values() if p.key in self.owner and not p.zombie}
        for p in procs.values():
            if p.key not in self.owner:
                continue
            if p.key in self.condemned and not p.zombie:
                with contextlib.suppress(OSError):
                    os.kill(p.pid, signal.SIGKILL)
            if p.zombie and p.ppid == self.me and not self._is_root(p):
                # An orphan reparented to the runner: nobody else will wait for it. (Roots are the
                # subprocess module's to wait for.)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(p.pid, os.WNOHANG)
        return bool(found)

    def _processes(self, full: bool) -> dict[int, Proc]:
        """Every process; unless ``full``, those known not to be the study's as last seen (a
        machine's thousands of processes cost a stat read each, the study's dozen do not)."""
        procs = {}
        for entry in os.listdir(_PROC):
            if not entry.isdigit():
                continue
            pid = int(entry)
            seen = self._seen.get(pid)
            if not full and seen is not None and seen.key in self.strangers:
                procs[pid] = seen
            elif (proc := read_proc(pid)) is not None:
                procs[pid] = proc
        self._seen = procs
        return procs

    def _own(self, p: Proc, trial: str, procs: dict[int, Proc], found: list[Proc]) -> None:
        parent = procs.get(p.ppid)
        if trial == "" and parent is not None:
            trial = self.owner.get(parent.key, "")
        self.owner[p.key] = trial
        found.append(p)
        parent_condemned = parent is not None and parent.key in self.condemned
        if parent_condemned or trial not in self.running:
            self.condemned.add(p.key)

    def _is_root(self, p: Proc) -> bool:
        return any(root.key == p.key for root in self.roots.values())

    def _tell(self, lines: str) -> None:
        if self.watchdog is not None and not self._tell_to(self.watchdog, lines):
            self.watchdog = None

    @staticmethod
    def _tell_to(watchdog: subprocess.Popen[bytes], lines: str) -> bool:
        """Writes whole lines, in chunks of at most PIPE_BUF bytes: a pipe takes such a write whole
        or not at all, so a full pipe drops lines, never half a line."""
        assert watchdog.stdin is not None
        chunks: list[bytes] = [b""]
        for line in lines.encode().splitlines(keepends=True):
            if len(chunks[-1]) + len(line) > select.PIPE_BUF:
                chunks.append(b"")
            chunks[-1] += line
        try:
            for chunk in chunks:
                os.write(watchdog.stdin.fileno(), chunk)
        except BlockingIOError:
            return True  # full: dropped, see start()
        except (OSError, ValueError):  # the watchdog is gone
            return False
        return True


def runner_record(contain: Containment) -> dict[str, Any]:
    """study.json's ``runner``: enough to tell later whether the study's runner still runs, and
    the marker its trials' processes carry (``grep -l`` it in /proc/*/environ)."""
    return {
        "pid": os.getpid(),
        "startTime": start_time(os.getpid()) if has_proc() else None,
        "host": socket.gethostname(),
        "watchdogPid": None if contain.watchdog is None else contain.watchdog.pid,
        "marker": f"{TOKEN_VARIABLE}={contain.token}",
        "subreaper": contain.subreaper,
    }


def runner_gone(doc: dict[str, Any]) -> str | None:
    """For a study.json that says ``Running``: why its runner is known to be gone (it ran on this
    machine and its process no longer runs), else None."""
    runner = doc.get("runner")
    if doc.get("state") != "Running" or not isinstance(runner, dict) or runner.get("pid") is None:
        return None
    if runner.get("host") != socket.gethostname():
        return None
    pid, start = int(runner["pid"]), runner.get("startTime")
    if process_alive(pid, None if start is None else int(start)):
        return None
    return f"its hpo run (pid {pid}) is no longer running"


# --- the watchdog --------------------------------------------------------------------------------


INTERRUPTED_REASON = "the runner died"


def mark_interrupted(study_file: Path, runner_pid: int, now: float) -> bool:
    """Records in study.json that the runner died: ``Interrupted``, every trial that was still
    running ``Stopped``. True when the file said ``Running`` (and was changed)."""
    try:
        doc = json.loads(study_file.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(doc, dict) or doc.get("state") != "Running":
        return False
    at = round(now, 3)
    last_write = doc.get("updatedAt")
    doc["state"] = "Interrupted"
    doc["reason"] = INTERRUPTED_REASON
    doc["message"] = f"hpo run (pid {runner_pid}) ended without finishing the study; its trials were killed"
    doc["finishedAt"] = doc["updatedAt"] = at
    for trial in doc.get("trials") or []:
        if trial.get("status") in ("Running", "Pending"):
            trial.update(status="Stopped", reason=INTERRUPTED_REASON, endedAt=at, killed=True)
    counts = doc.get("counts")
    if isinstance(counts, dict):
        for name in counts:
            if name != "total":
                counts[name] = sum(1 for t in doc.get("trials") or [] if str(t.get("status")).lower() == name)
    budget = doc.get("budget")
    used = budget.get("usedSeconds") if isinstance(budget, dict) else None
    if isinstance(budget, dict) and isinstance(doc.get("startedAt"), int | float):
        # The study's clock (a resumed study's leaves out the time between sessions): on from the
        # time used as of the last write.
        if isinstance(used, int | float) and isinstance(last_write, int | float):
            budget["usedSeconds"] = round(used + max(0.0, now - last_write), 3)
        else:
            budget["usedSeconds"] = round(now - doc["startedAt"], 3)
        if isinstance(doc.get("deadline"), int | float):
            budget["finishedInsideSeconds"] = round(doc["deadline"] - now, 3)
    sessions = doc.get("sessions")
    if isinstance(sessions, list) and sessions and isinstance(sessions[-1], dict):
        sessions[-1]["endedAt"] = sessions[-1].get("endedAt") or at  # when `hpo run --resume` counts from
    # The watchdog runs this file alone (python -I -S), without the package: atomic.py's steps, inline.
    tmp = study_file.with_name(f".{study_file.name}.watchdog.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(json.dumps(doc, indent=2) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, study_file)
        folder = os.open(study_file.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError:
        return False
    return True


def sweep(token: str, told: Iterable[Key], groups: Iterable[int], seconds: float = SWEEP_SECONDS) -> None:
    """Kills every process of the study: marked with ``token``, or told by the runner (and still
    the same process), and, without /proc, the trials' process groups. Repeats until none is
    found or ``seconds`` passed (a process may fork while it is being killed)."""
    told = set(told)
    if not has_proc():
        for group in groups:
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGKILL)
        return
    until = time.monotonic() + seconds
    while True:
        procs = processes()
        me = os.getpid()
        victims = [
            p.pid
            for p in procs.values()
            if p.pid != me and not p.zombie and (p.key in told or marked_trial(p.pid, token) is not None)
        ]
        # Whatever descends from a victim goes too, though its environment was cleared.
        doomed = {p.key for p in procs.values() if p.pid in victims}
        grew = True
        while grew:
            more = [
                p
                for p in procs.values()
                if p.key not in doomed and (q := procs.get(p.ppid)) and q.key in doomed
            ]
            grew = bool(more)
            doomed.update(p.key for p in more)
            victims += [p.pid for p in more if not p.zombie]
        told |= doomed
        if not victims or time.monotonic() >= until:
            return
        for pid in victims:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def watch(token: str, runner_pid: int, study_file: Path | None, lines: Iterable[bytes]) -> int:
    """The watchdog: reads what the runner tells it until the runner is gone, then kills what is
    left of the study and, unless the runner said it was done, marks study.json interrupted."""
    told: set[Key] = set()
    groups: set[int] = set()
    done = False
    for line in lines:
        words = line.split()
        if words[:1] == [b"process"] and len(words) == 3:
            told.add((int(words[1]), int(words[2])))
        elif words[:1] == [b"group"] and len(words) == 2:
            groups.add(int(words[1]))
        elif words[:1] == [b"ended"] and len(words) == 2:
            groups.discard(int(words[1]))
        elif words == [b"done"]:
            done = True
    sweep(token, told, groups)
    if not done and study_file is not None:
        mark_interrupted(study_file, runner_pid, time.time())
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[0] != "watch":
        print("usage: contain.py watch TOKEN RUNNER_PID STUDY_FILE", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner decides what ^C means
    _, token, runner_pid, study_file = argv
    return watch(token, int(runner_pid), Path(study_file) if study_file else None, sys.stdin.buffer)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
