"""``python -m hpo_trial.collect``: runs a training command that does not call hpo_trial.report() and
reports its metric for it.

    python -m hpo_trial.collect --kind stdout -- python train.py --lr 0.01
    python -m hpo_trial.collect --kind file --path 'logs/*/metrics.csv' --resource-offset 1 -- python train.py
    python -m hpo_trial.collect --kind tensorboard --path runs -- python train.py

Where the metric comes from (``--kind``):

* ``stdout``: the command's output, stdout and stderr, line by line (``\\r`` ends a line too, as a
  progress bar's). By default every ``name=value`` pair on a line counts (Katib's format), and
  ``name: value`` and ``'name': value`` too (a printed dict, as Hugging Face's Trainer logs). A
  ``--pattern`` is a Python regular expression: groups ``name`` and ``value`` give one pair per
  match, and every other named group is a metric of its name. The output is passed through unchanged.
* ``file``: a CSV file with a header row (Lightning's CSVLogger: blank cells are skipped) or a
  JSON-lines file (one object a line, nested objects as dotted names), followed as the trainer
  appends to it; ``--path`` may be a glob. A file rewritten with a new header (CSVLogger does that
  when a new metric appears) is read again and the records already taken are skipped.
* ``tensorboard``: scalar summaries in the TensorBoard event files under ``--path``, read with the
  ``tensorboard`` package's event file loader.

A record (a line, a row, the scalars of one TensorBoard step) with the study's metric
(``HPO_METRIC``, or ``--metric``) is reported at the resource in its ``--resource-key`` (default
``epoch``, else ``step``; for TensorBoard the event's step), plus ``--resource-offset``. A record
with the metric but no resource takes the last resource seen before it, so a trainer may print
``epoch=3`` and then its metrics on lines of their own. Every other number of the record goes into
the report's ``extra``. Content that exists when the collector starts (a resumed run's files) is
skipped. Reports go through the SDK's Reporter, to the study the environment names, in the order
read, on a thread of their own so that a slow API server never holds up the command's output.

SIGTERM, SIGUSR1 and SIGUSR2 are passed on to the command, and so are SIGINT, SIGHUP and SIGQUIT
unless the collector's process group is a terminal's foreground group (the terminal sent them to the
command already). The command is killed if the collector dies. The collector exits with the
command's exit status, or by the signal that ended it. When the command exits 0 and nothing was
reported it says so, with what it looked for and the last lines of output, on stderr and in the
container's termination message file (``--termination-log``, where it exists).

Standard library only, except ``--kind tensorboard`` (``pip install tensorboard``).
"""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import logging
import math
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo_trial import env
from hpo_trial.journal import ReportJournal
from hpo_trial.lines import LineTail
from hpo_trial.reporting import Reporter, RetryPolicy
from hpo_trial.sending import JOURNAL_FLUSH_SECONDS, Goal, Thinning, Urgency, is_urgent
from hpo_trial.transports import ClusterTransport, Transport, transport_from_env

log = logging.getLogger("hpo_trial")

KINDS = ("stdout", "file", "tensorboard")
DEFAULT_RESOURCE_KEYS = ("epoch", "step")
DEFAULT_POLL_SECONDS = 0.2
# After the command exits, how long its output may take to reach end-of-file: a process it left
# behind may hold the pipe open for ever.
DRAIN_SECONDS = 2.0
TAIL_LINES = 20
TAIL_LINE_CHARS = 300
# A line longer than this (a progress bar never ended) is matched in parts of this size.
MAX_LINE_BYTES = 64 * 1024
CHUNK_BYTES = 64 * 1024
# TensorBoard steps held while their metric or resource has not been read yet.
MAX_PENDING_STEPS = 1000
# Kubernetes reads at most 4096 bytes of a termination message.
TERMINATION_MESSAGE_BYTES = 4096
EXIT_USAGE = 2
EXIT_NOT_FOUND = 127
EXIT_NOT_EXECUTABLE = 126
PR_SET_PDEATHSIG = 1

FORWARDED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
# A terminal sends these to its whole foreground process group, the command included.
FROM_TERMINAL = (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?i:nan|inf(?:inity)?)"
#: name=value, name: value, 'name': value, "name": value (the name starts with a letter or _); the
#: number ends where the word does (0.9s and 1.2.3 are no numbers; "accuracy=0.91." is one).
DEFAULT_PATTERN = (
    r"""(?<![\w./-])['"]?(?P<name>[A-Za-z_][\w./-]*)['"]?\s*[=:]\s*(?P<value>""" + _NUMBER + r")(?!\w|\.\d)"
)
_VARIABLE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")

Record = dict[str, float]


class UsageError(ValueError):
    """Options that cannot run."""


def number(text: str) -> float | None:
    """A number from its text: ints stay ints, NaN and the infinities are floats; None otherwise."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def expand_variables(text: str, environ: Mapping[str, str]) -> str:
    """``$(VAR)`` replaced by its value where it is set, as Kubernetes expands a command."""
    return _VARIABLE.sub(lambda m: environ.get(m.group(1), m.group(0)), text)


# --- records to reports ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """A report to send: the resource, the metric's value and the other numbers of its record."""

    resource: float
    value: float
    extra: dict[str, float]
    at: float  # when it was read, the report's time


@dataclass
class Extractor:
    """Turns records into reports of ``metric`` at the resource of ``resource_keys`` (the first
    present), plus ``offset``; a record without a resource takes the last one seen."""

    metric: str
    resource_keys: Sequence[str] = DEFAULT_RESOURCE_KEYS
    offset: float = 0.0
    clock: Callable[[], float] = time.time
    last_resource: float | None = None
    records: int = 0
    without_resource: int = 0  # records with the metric and no resource before them

    def take(self, record: Mapping[str, float]) -> Found | None:
        self.records += 1
        key = next((k for k in self.resource_keys if k in record), None)
        if key is not None:
            self.last_resource = record[key] + self.offset
        if self.metric not in record:
            return None
        if self.last_resource is None:
            self.without_resource += 1
            return None
        extra = {k: v for k, v in record.items() if k not in (self.metric, key)}
        return Found(self.last_resource, record[self.metric], extra, self.clock())


# --- stdout: lines ----------------------------------------------------------------------------------


class LineParser:
    """The numbers of one line of output, by name."""

    def __init__(self, pattern: str | None, wanted: Iterable[str] = ()) -> None:
        self.custom = pattern is not None
        self.regex = re.compile(pattern if pattern is not None else DEFAULT_PATTERN)
        groups = set(self.regex.groupindex)
        self.pairs = {"name", "value"} <= groups
        if not groups:
            raise UsageError(f"--pattern {pattern!r} names no group")
        # The default pattern finds a name only where its text is on the line: a line that holds none
        # of the names that matter is passed over without running the regex.
        self.wanted = () if self.custom else tuple(wanted)

    def may_match(self, text: str) -> bool:
        """Whether ``text`` may hold a name that matters (always, with a pattern of one's own)."""
        return not self.wanted or any(name in text for name in self.wanted)

    def parse(self, line: str) -> Record:
        if not self.may_match(line):
            return {}
        found: Record = {}
        for match in self.regex.finditer(line):
            groups = match.groupdict()
            if self.pairs:
                name, text = groups.pop("name"), groups.pop("value")
                if name is not None and text is not None:
                    self._put(found, name, text)
            for name, text in groups.items():
                if text is not None:
                    self._put(found, name, text)
        return found

    @staticmethod
    def _put(found: Record, name: str, text: str) -> None:
        value = number(text)
        if value is not None:
            found[name] = value

    def describe(self) -> str:
        return f"pattern {self.regex.pattern!r}" if self.custom else "name=value or name: value pairs"


# --- file: CSV and JSON lines -------------------------------------------------------------------------


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> Record:
    out: Record = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= _flatten(value, name + ".")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = value
    return out


@dataclass
class FollowedFile:
    """One file the trainer appends to, read as far as its last whole line."""

    path: Path
    csv: bool
    tail: LineTail = field(default_factory=LineTail)
    identity: tuple[int, int] | None = None
    header: list[str] | None = None
    header_line: bytes | None = None
    taken: int = 0  # records read so far (those that existed at the start included)

    def read(self, final: bool = False) -> list[Record]:
        """The records appended since the last read; ``final``: the writer is gone, so a last line
        without its newline is whole."""
        try:
            with self.path.open("rb") as handle:
                stat = os.fstat(handle.fileno())
                identity = (stat.st_dev, stat.st_ino)
                if (
                    identity != self.identity
                    or stat.st_size < self.tail.offset
                    or self._header_changed(handle)
                ):
                    # Replaced, truncated or rewritten: read again from the start, skipping what was taken.
                    self.identity, self.tail = identity, LineTail()
                    self.header = self.header_line = None
                    skip, self.taken = self.taken, 0
                else:
                    skip = 0
                handle.seek(self.tail.offset)
                data = handle.read()
        except OSError:
            return []
        records = []
        for line in self.tail.lines(data, final):
            record = self._parse(line)
            if record is None:
                continue
            self.taken += 1
            if self.taken > skip:
                records.append(record)
        return records

    def _header_changed(self, handle: Any) -> bool:
        if not self.csv or self.header_line is None:
            return False
        start = handle.read(len(self.header_line))
        handle.seek(0)
        return bool(start != self.header_line)

    def _parse(self, line: bytes) -> Record | None:
        text = line.decode("utf-8", errors="replace").strip()
        if not text:
            return None
        if self.csv:
            cells = next(csv.reader([text]), [])
            if self.header is None:
                self.header, self.header_line = [c.strip() for c in cells], line + b"\n"
                return None
            record: Record = {}
            for name, cell in zip(self.header, cells, strict=False):
                value = number(cell) if cell.strip() else None
                if value is not None:
                    record[name] = value
            return record
        try:
            parsed = json.loads(text)
        except ValueError:
            return None
        return _flatten(parsed) if isinstance(parsed, dict) else None


class FileSource:
    """The files matching a path (a glob), each followed from where it was when the source started."""

    def __init__(self, path: str, fmt: str | None) -> None:
        self.pattern = path
        self.csv = fmt == "csv" if fmt is not None else path.lower().endswith(".csv")
        self.files: dict[str, FollowedFile] = {}

    def _matches(self) -> list[str]:
        return sorted(glob.glob(self.pattern, recursive=True))

    def start(self) -> None:
        for name in self._matches():
            followed = FollowedFile(Path(name), self.csv)
            followed.read()  # what is there already belongs to an earlier run
            self.files[name] = followed

    def read(self, final: bool = False) -> list[Record]:
        for name in self._matches():
            if name not in self.files:
                self.files[name] = FollowedFile(Path(name), self.csv)
        records: list[Record] = []
        for followed in self.files.values():
            records += followed.read(final)
        return records

    def describe(self) -> str:
        shown = ", ".join(self.files) or "none yet"
        return f"{'CSV' if self.csv else 'JSON-lines'} files matching {self.pattern!r} ({shown})"


# --- tensorboard: event files -------------------------------------------------------------------------


class TensorBoardSource:
    """Scalars of the event files under a folder, grouped by step; read with tensorboard's loader."""

    def __init__(self, folder: str, metric: str, resource_key: str | None) -> None:
        self.folder = folder
        self.metric = metric
        self.resource_key = resource_key
        self.loaders: dict[str, Any] = {}
        self.pending: dict[int, Record] = {}
        self.tags: set[str] = set()
        self.events = 0
        self._loader_class: Any = None
        self._make_ndarray: Any = None

    def _files(self) -> list[str]:
        pattern = os.path.join(glob.escape(self.folder), "**", "*tfevents*")
        return sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))

    def _load_library(self) -> None:
        if self._loader_class is not None:
            return
        try:
            # The raw events: scalars are simple_value (torch, TF1) or a scalar tensor (TF2), both read
            # below, and the loader's compatibility layers would triple the cost of a read.
            from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
            from tensorboard.util.tensor_util import make_ndarray
        except ImportError as err:
            raise UsageError(f"--kind tensorboard needs the tensorboard package: {err}") from err
        self._loader_class, self._make_ndarray = LegacyEventFileLoader, make_ndarray

    def prepare(self) -> None:
        """Before the command starts: event files already there belong to an earlier run. Without
        any the library is loaded later, while the command starts."""
        existing = self._files()
        if not existing:
            return
        self._load_library()
        for path in existing:
            loader = self._loader_class(path)
            for _ in loader.Load():
                pass
            self.loaders[path] = loader

    def read(self, final: bool = False) -> list[Record]:
        files = self._files()
        if not files and not self.loaders:
            return []
        self._load_library()
        for path in files:
            if path not in self.loaders:
                self.loaders[path] = self._loader_class(path)
        for loader in self.loaders.values():
            for event in loader.Load():
                self._take(event)
        return self._ready(final)

    def _take(self, event: Any) -> None:
        if not event.HasField("summary"):
            return
        for value in event.summary.value:
            scalar = self._scalar(value)
            if scalar is not None:
                self.events += 1
                self.tags.add(value.tag)
                self.pending.setdefault(int(event.step), {})[value.tag] = scalar

    def _scalar(self, value: Any) -> float | None:
        import numpy  # tensorboard's own dependency

        kind = value.WhichOneof("value")
        if kind == "simple_value":
            array = numpy.float32(value.simple_value)
        elif kind == "tensor":
            try:
                array = self._make_ndarray(value.tensor)
            except (ValueError, TypeError):
                return None
            if array.size != 1 or array.dtype.kind not in "fiub":
                return None
            array = array.reshape(())[()]
        else:
            return None
        # A float32 as the shortest text that is that float32 (0.495, not 0.4950000047683716), the
        # value the trainer logged.
        return float(str(array)) if array.dtype == numpy.float32 else float(array)

    def _ready(self, final: bool) -> list[Record]:
        """Steps with the metric, and the resource where it is a tag, as records; a step whose
        resource tag has not been read yet waits for the next read (the writer flushes a step's
        scalars together, so it comes with them)."""
        out: list[Record] = []
        done: list[int] = []
        for step in sorted(self.pending):
            group = self.pending[step]
            if self.metric not in group:
                continue
            if self.resource_key is None:
                out.append({**group, "step": step})
            elif self.resource_key in group:
                out.append(group)
            elif not final:
                continue
            done.append(step)
        if done:
            last = done[-1]
            self.pending = {s: g for s, g in self.pending.items() if s > last}
        if final:
            self.pending = {}
        elif len(self.pending) > MAX_PENDING_STEPS:  # steps logged without the metric, e.g. every batch
            kept = sorted(self.pending)[-MAX_PENDING_STEPS:]
            self.pending = {s: self.pending[s] for s in kept}
        return out

    def describe(self) -> str:
        tags = ", ".join(sorted(self.tags)[:20]) or "none"
        return f"event files under {self.folder!r}: {len(self.loaders)} file(s), scalar tags {tags}"


# --- the collector --------------------------------------------------------------------------------------


@dataclass
class Options:
    kind: str
    command: list[str]
    metric: str
    pattern: str | None = None
    path: str | None = None
    format: str | None = None
    resource_key: str | None = None
    resource_offset: float = 0.0
    poll: float = DEFAULT_POLL_SECONDS
    termination_log: str | None = None


@dataclass
class Collector:
    """Runs one command and reports what its output, file or event files say."""

    options: Options
    transport: Transport | None = None  # None: from the environment, as the SDK chooses
    policy: RetryPolicy | None = None
    thinning: Thinning | None = None  # None: from the environment to the cluster, else none
    stdout_fd: int = 1
    stderr_fd: int = 2
    sent: int = 0
    delivered: int = 0
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    child: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        o = self.options
        if o.kind not in KINDS:
            raise UsageError(f"--kind must be one of {', '.join(KINDS)}, got {o.kind!r}")
        if o.kind in ("file", "tensorboard") and not o.path:
            raise UsageError(f"--kind {o.kind} needs --path")
        if o.kind != "stdout" and o.pattern is not None:
            raise UsageError("--pattern is for --kind stdout")
        if not o.command:
            raise UsageError("no command: put it after --")
        if o.resource_key is not None:
            keys: tuple[str, ...] = (o.resource_key,)
        else:
            keys = ("step",) if o.kind == "tensorboard" else DEFAULT_RESOURCE_KEYS
        self.extractor = Extractor(o.metric, keys, o.resource_offset)
        self.parser: LineParser | None = None
        self.source: FileSource | TensorBoardSource | None = None
        if o.kind == "stdout":
            try:
                self.parser = LineParser(o.pattern, (o.metric, *keys))
            except re.error as err:
                raise UsageError(f"--pattern is not a Python regular expression: {err}") from err
        else:
            assert o.path is not None
            path = expand_variables(o.path, os.environ)
            if o.kind == "file":
                self.source = FileSource(path, o.format)
            else:
                self.source = TensorBoardSource(path, o.metric, o.resource_key)
        self._lock = threading.Lock()  # the extractor's state, shared by the two output streams
        self._queue: queue.Queue[Found | None] = queue.Queue()
        self._sending_at = 0.0
        self._signals: list[int] = []

    # --- running -----------------------------------------------------------------------------------

    def run(self) -> int:
        """Runs the command to its end; returns the exit status to leave with (negative: the signal
        that ended the command, to end this process with)."""
        if isinstance(self.source, FileSource):
            self.source.start()
        elif isinstance(self.source, TensorBoardSource):
            self.source.prepare()
        previous = self._install_signals()
        try:
            code = self._run()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return code

    def _run(self) -> int:
        stdout_kind = self.options.kind == "stdout"
        environ = dict(os.environ)
        if stdout_kind:
            # Python buffers a pipe by blocks: without this a trainer's prints would come at its exit.
            environ.setdefault("PYTHONUNBUFFERED", "1")
        try:
            self.child = subprocess.Popen(
                self.options.command,
                stdout=subprocess.PIPE if stdout_kind else None,
                stderr=subprocess.PIPE if stdout_kind else None,
                env=environ,
                preexec_fn=_die_with_parent(),
            )
        except OSError as err:
            self._say(f"cannot start {self.options.command[0]!r}: {err.strerror or err}")
            return EXIT_NOT_FOUND if isinstance(err, FileNotFoundError) else EXIT_NOT_EXECUTABLE
        child = self.child
        for signum in self._signals:  # arrived while it was being started
            self._forward(signum)
        sender = threading.Thread(target=self._send_all, name="hpo-collect-send", daemon=True)
        sender.start()
        pumps: list[threading.Thread] = []
        if stdout_kind:
            assert child.stdout is not None and child.stderr is not None
            for source, sink in ((child.stdout, self.stdout_fd), (child.stderr, self.stderr_fd)):
                pump = threading.Thread(target=self._pump, args=(source.fileno(), sink), daemon=True)
                pump.start()
                pumps.append(pump)
        while True:
            try:
                code = child.wait(timeout=self.options.poll)
                break
            except subprocess.TimeoutExpired:
                self._read_source(final=False)
        deadline = time.monotonic() + DRAIN_SECONDS
        for pump in pumps:
            pump.join(max(0.0, deadline - time.monotonic()))
        self._read_source(final=True)
        self._queue.put(None)
        sender.join()
        if code == 0 and self.sent == 0:
            self._nothing_reported()
        return code

    def _read_source(self, final: bool) -> None:
        if self.source is None:
            return
        try:
            records = self.source.read(final)
        except UsageError as err:  # tensorboard missing: say it once, the command goes on
            self._say(str(err))
            self.source = None
            return
        for record in records:
            self._found(record)

    def _found(self, record: Mapping[str, float]) -> None:
        with self._lock:  # stdout and stderr share the last resource seen, and the order of reports
            found = self.extractor.take(record)
            if found is not None:
                self.sent += 1
                self._queue.put(found)

    # --- output ------------------------------------------------------------------------------------

    def _pump(self, source: int, sink: int) -> None:
        """Passes the command's output through, and matches it a block of whole lines at a time."""
        partial = b""
        while True:
            try:
                chunk = os.read(source, CHUNK_BYTES)
            except OSError:
                break
            if not chunk:
                break
            _write_all(sink, chunk)
            data = partial + chunk
            end = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
            if end == 0 and len(data) <= MAX_LINE_BYTES:
                partial = data
                continue
            if end == 0:  # a line that never ends (a progress bar): matched by its first part
                end = len(data)
            partial = data[end:]
            self._block(data[:end])
        if partial:
            self._block(partial)

    def _block(self, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace")
        parser = self.parser
        assert parser is not None
        # Most output names nothing the study reads: such a block is not split into lines at all.
        if parser.may_match(text):
            for line in text.replace("\r", "\n").split("\n"):
                record = parser.parse(line) if line else None
                if record:
                    self._found(record)
        recent = text[-TAIL_LINES * TAIL_LINE_CHARS :].replace("\r", "\n").split("\n")
        with self._lock:
            self.tail.extend(line[:TAIL_LINE_CHARS] for line in recent[-TAIL_LINES - 1 :] if line.strip())

    # --- reports ----------------------------------------------------------------------------------

    def _send_all(self) -> None:
        transport = self.transport or transport_from_env()
        # The report's time is when its record was read, not when a slow delivery got to it.
        reporter = Reporter(transport, self.policy or RetryPolicy.from_env(), clock=lambda: self._sending_at)
        # To the cluster the HPOTrial status is thinned as the SDK's (sending.Thinning): the full
        # curve is in what the collector reads, and in the journal.
        cluster = isinstance(transport, ClusterTransport)
        thinning = self.thinning
        if thinning is None:
            thinning = Thinning.from_env() if cluster else Thinning()
        journal = ReportJournal.from_env() if cluster else None
        urgency, goal = Urgency.from_env(), Goal.from_env()
        held: dict[str, Any] | None = None  # the latest report not written (yet)
        while True:
            found = self._queue.get()
            if found is None:
                break
            self._sending_at = found.at
            try:
                body = reporter.build(found.resource, found.value, found.extra)
            except Exception:
                log.exception("report(%r, %r) failed and was dropped", found.resource, found.value)
                continue
            if journal is not None:
                journal.append(body)
            urgent = is_urgent(urgency, goal, body)
            if thinning(body["resource"], urgent):
                held = None
                self._deliver(reporter, body)
            else:
                held = body  # the command's output or files hold it: logged for debugging only
                log.debug("report (not written to the status): %s", json.dumps(body, sort_keys=True))
        if held is not None:  # the command's last report always reaches the status
            self._deliver(reporter, held)
        if journal is not None:
            journal.flush(JOURNAL_FLUSH_SECONDS)

    def _deliver(self, reporter: Reporter, body: dict[str, Any]) -> None:
        try:
            delivered = reporter.deliver([body])
        except Exception:
            log.exception("report seq=%s failed and was dropped", body["seq"])
            delivered = False
        self.delivered += delivered

    # --- signals ------------------------------------------------------------------------------------

    def _install_signals(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return previous
        for signum in (*FORWARDED, *FROM_TERMINAL):
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum in FROM_TERMINAL and _terminal_sent_it():
            return
        if self.child is None:
            self._signals.append(signum)
        else:
            self._forward(signum)

    def _forward(self, signum: int) -> None:
        child = self.child
        if child is not None and child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)

    # --- nothing reported -----------------------------------------------------------------------

    def describe(self) -> str:
        """What the collector looked for."""
        keys = " or ".join(self.extractor.resource_keys)
        if self.parser is not None:
            where = f"output lines ({self.parser.describe()})"
        else:
            assert self.source is not None
            where = self.source.describe()
        return f"{self.options.metric} with {keys} in {where}"

    def _nothing_reported(self) -> None:
        x = self.extractor
        lines = [f"the command exited 0 and reported nothing: looked for {self.describe()}"]
        if x.without_resource:
            lines.append(f"{x.without_resource} record(s) had {x.metric} but no resource before them")
        lines.append(f"{x.records} record(s) read")
        if self.tail:
            lines.append("last lines of output:")
            lines += [f"  {line}" for line in self.tail]
        message = "\n".join(lines)
        self._say(message)
        path = self.options.termination_log
        if path and os.path.exists(path):
            encoded = message.encode()[:TERMINATION_MESSAGE_BYTES]
            with contextlib.suppress(OSError), open(path, "wb") as handle:
                handle.write(encoded)

    def _say(self, message: str) -> None:
        text = "".join(f"hpo_trial.collect: {line}\n" for line in message.splitlines())
        _write_all(self.stderr_fd, text.encode())


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except OSError:
            return  # nobody reads our output any more; the command's reports still count
        view = view[written:]


def _terminal_sent_it() -> bool:
    """This process group is a terminal's foreground group, so a SIGINT, SIGHUP or SIGQUIT went to
    the command too."""
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp():
                return True
        except OSError:
            continue
    return False


def _die_with_parent() -> Callable[[], None] | None:
    """A pre-exec hook that makes the kernel kill the command when the collector dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return hook


# --- command line ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Options:
    """Options from ``OPTIONS -- COMMAND...``; raises UsageError."""
    import argparse

    argv = list(argv)
    if "--" not in argv:
        raise UsageError("usage: python -m hpo_trial.collect --kind KIND [OPTIONS] -- COMMAND...")
    split = argv.index("--")
    own, command = argv[:split], argv[split + 1 :]

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> Any:
            raise UsageError(message)

    parser = Parser(prog="python -m hpo_trial.collect", add_help=False)
    parser.add_argument("--kind", required=True, choices=KINDS)
    parser.add_argument("--metric", default=None)
    parser.add_argument("--pattern", default=None)
    parser.add_argument("--path", default=None)
    parser.add_argument("--format", choices=("csv", "jsonl"), default=None)
    parser.add_argument("--resource-key", default=None)
    parser.add_argument("--resource-offset", type=float, default=0.0)
    parser.add_argument("--poll", type=float, default=DEFAULT_POLL_SECONDS)
    parser.add_argument("--termination-log", default=None)
    args = parser.parse_args(own)
    metric = args.metric or env.metric_name(environ)
    if not metric:
        raise UsageError(f"no metric: give --metric or set {env.HPO_METRIC}")
    if not (math.isfinite(args.resource_offset) and math.isfinite(args.poll) and args.poll > 0):
        raise UsageError("--resource-offset must be finite and --poll positive")
    return Options(
        kind=args.kind,
        command=command,
        metric=metric,
        pattern=args.pattern,
        path=args.path,
        format=args.format,
        resource_key=args.resource_key,
        resource_offset=args.resource_offset,
        poll=args.poll,
        termination_log=args.termination_log,
    )


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="hpo_trial.collect: %(message)s")
    # Outside a study the SDK logs each report at INFO instead of sending it: a way to try a pattern.
    logging.getLogger("hpo_trial").setLevel(logging.INFO)
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
        collector = Collector(options)
        code = collector.run()
    except UsageError as err:
        print(f"hpo_trial.collect: {err}", file=sys.stderr)
        return EXIT_USAGE
    if code < 0:
        # Ended by a signal: end the same way, so whoever waits on us sees that signal. As PID 1 of a
        # container the default action does not apply, hence the shell's 128 + N after it.
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        return 128 - code
    return code


if __name__ == "__main__":
    sys.exit(main())
