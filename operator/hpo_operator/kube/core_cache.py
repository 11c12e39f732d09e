"""The decision core of each study, kept in the operator's memory between reconciles.

A ``Study`` built afresh on every reconcile re-derives every trial's reports, replays ASHA from the
first record and refits the sampler's model each time; kept, it does that only for what changed
(study.py and sampler.py key their caches on the trials' content, so a kept core decides exactly as
a fresh one would on the same observation). The cache is only that: state lives in the API, and an
operator restarted, or a study whose core was evicted, gets a fresh core that decides the same.

A core is reused only while what it was built from is the same: the study's uid (a study deleted
and made again under the same name is another study), its spec's generation, the config derived
from that spec and the slot count (the cluster's GPU capacity over the GPUs per trial). Anything
else a core depends on comes with each observation.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..config import StudyConfig
from ..study import Study

# Studies whose cores are kept; the least recently used beyond it is dropped (and rebuilt if needed).
MAX_STUDIES = 512


@dataclass(frozen=True)
class CoreKey:
    """What a kept core was built from; a core is reused only for an equal key."""

    generation: int | None
    config: StudyConfig
    slots: int


class CoreCache:
    """Decision cores by study uid, least recently used dropped past ``max_studies``.

    Thread-safe for the engine's workers, which reconcile different studies at once; one study is
    reconciled by one worker at a time, so a core is never used by two threads together.
    """

    def __init__(self, max_studies: int = MAX_STUDIES, build: Callable[[StudyConfig, int], Study] = Study):
        self.max_studies = max_studies
        self._build = build
        self._cores: OrderedDict[str, tuple[CoreKey, Study]] = OrderedDict()
        self._lock = threading.Lock()
        self.built = 0  # cores built, for tests and the benchmark: reuse shows as fewer builds

    def core(self, uid: str, generation: int | None, config: StudyConfig, slots: int) -> Study:
        """The study's kept core when built from the same inputs, else a fresh one (kept from now)."""
        key = CoreKey(generation, config, slots)
        with self._lock:
            kept = self._cores.get(uid)
            if kept is not None and kept[0] == key:
                self._cores.move_to_end(uid)
                return kept[1]
        core = self._build(config, slots)
        with self._lock:
            self.built += 1
            self._cores[uid] = (key, core)
            self._cores.move_to_end(uid)
            while len(self._cores) > self.max_studies:
                self._cores.popitem(last=False)
        return core

    def forget(self, uid: str) -> None:
        """Drop a study's core (the study is gone, or finished)."""
        with self._lock:
            self._cores.pop(uid, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._cores)
