"""In-memory copies of API objects of one kind, kept current by a watch (informer.py) and by the
operator's own writes; the reconciles read them instead of the API.

Ordering: a watch delivers the changes of one resource in order, but the operator's own write (the
object the API answered with) can reach the store before or after the watch event of the same
change, and a watch can lag behind that write. So an object only ever replaces an older version of
itself: resourceVersions are compared as numbers, which every API server backed by etcd gives (when
either is not a number, the later arrival wins, as a watch would have it). A deleted object leaves a
tombstone with its last resourceVersion, so that a late event or write of the old object does not
bring it back; a newer one (the name made again) does. A re-list replaces what is older than the
listing, tombstones included.

Pure data structure: no I/O, no clock; thread-safe (the informers write from their threads, the
engine's workers read from theirs).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]
Key = tuple[str, str]  # (namespace, "" for a cluster-scoped object; name)
Transform = Callable[[JSON], JSON]
MAX_TOMBSTONES = 10_000  # the oldest beyond this are forgotten (a re-list forgets all of them)
UNKNOWN = ""  # the resourceVersion of a deletion the API answered without the object


def key_of(obj: JSON) -> Key:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


def version_of(obj: JSON) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def newer(candidate: str, current: str) -> bool:
    """Whether resourceVersion ``candidate`` is later than ``current``; when they cannot be
    compared, the one that arrives later is taken."""
    if candidate.isdigit() and current.isdigit():
        return int(candidate) > int(current)
    return candidate != current or not candidate


def older(candidate: str, current: str) -> bool:
    """Whether resourceVersion ``candidate`` is known to be earlier than ``current`` (both numbers)."""
    return candidate.isdigit() and current.isdigit() and int(candidate) < int(current)


@dataclass(frozen=True)
class Change:
    """What one event did to the store: the object as it now is (or was, when deleted)."""

    type: str  # ADDED, MODIFIED, DELETED
    obj: JSON


class Store:
    """Objects by (namespace, name), and by the value of ``index_label`` in each namespace."""

    def __init__(self, index: Callable[[JSON], str | None] | None = None, transform: Transform | None = None):
        self._index_of = index
        self._transform = transform
        self._objects: dict[Key, JSON] = {}
        self._index: dict[Key, set[str]] = {}  # (namespace, label value) -> names
        self._gone: OrderedDict[Key, str] = OrderedDict()  # tombstones: key -> resourceVersion
        self._lock = threading.Lock()
        self._synced = threading.Event()

    # --- reads ------------------------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        """Whether the store was filled by a complete listing at least once."""
        return self._synced.is_set()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def get(self, namespace: str, name: str) -> JSON | None:
        with self._lock:
            return self._objects.get((namespace, name))

    def select(self, namespace: str, value: str) -> list[JSON]:
        """The objects of ``namespace`` whose index value is ``value``, by name."""
        with self._lock:
            names = sorted(self._index.get((namespace, value), ()))
            return [self._objects[(namespace, n)] for n in names]

    def items(self) -> list[JSON]:
        with self._lock:
            return list(self._objects.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)

    # --- writes -----------------------------------------------------------------------------------

    def replace(self, objects: Iterable[JSON], version: str = "") -> list[Change]:
        """A complete listing, made at resourceVersion ``version``: the store becomes ``objects``,
        except for what changed after the listing began (a stored object or a deletion newer than
        ``version``: an own write, or a watch event that overtook the listing). Returns what changed."""
        listed = {key_of(o): o for o in map(self._shape, objects)}
        after = version.isdigit()

        def later(v: str) -> bool:
            return after and v.isdigit() and int(v) > int(version)

        changes: list[Change] = []
        with self._lock:
            fresh: dict[Key, JSON] = {}
            for key, obj in listed.items():
                current = self._objects.get(key)
                if (
                    current is not None
                    and newer(version_of(current), version_of(obj))
                    and later(version_of(current))
                ):
                    fresh[key] = current
                elif key not in self._objects and later(self._gone.get(key, "")):
                    continue  # deleted after the listing
                else:
                    fresh[key] = obj
            for key, current in self._objects.items():
                if key not in listed and later(version_of(current)):
                    fresh[key] = current  # made after the listing
            for key, stored in self._objects.items():
                if key not in fresh:
                    changes.append(Change("DELETED", stored))
            for key, obj in fresh.items():
                before = self._objects.get(key)
                if before is None:
                    changes.append(Change("ADDED", obj))
                elif version_of(before) != version_of(obj):
                    changes.append(Change("MODIFIED", obj))
            gone = OrderedDict((k, v) for k, v in self._gone.items() if later(v) and k not in fresh)
            self._objects = {}
            self._index = {}
            self._gone = gone
            for key, obj in fresh.items():
                self._put(key, obj)
            self._synced.set()
        return changes

    def apply(self, kind: str, obj: JSON, own: bool = False) -> Change | None:
        """A watch event (ADDED, MODIFIED, DELETED); returns the change, or None when the store had
        this version or a newer one already. ``own``: the object is the API's answer to the
        operator's own write, the latest version at the time."""
        obj = self._shape(obj)
        key = key_of(obj)
        with self._lock:
            if kind == "DELETED":
                current = self._objects.get(key)
                if current is not None and older(version_of(obj), version_of(current)):
                    return None  # the name was made again since: this deletion is of the old one
                gone = self._gone.get(key)
                if current is None and gone and not newer(version_of(obj), gone):
                    return None  # deleted at this version already (a watch that replays its events)
                old = self._drop(key, version_of(obj))
                return Change("DELETED", old or obj)
            if not self._is_newer(key, obj, own):
                return None
            existed = key in self._objects
            self._gone.pop(key, None)
            self._put(key, obj)
            return Change("MODIFIED" if existed else "ADDED", obj)

    def written(self, obj: JSON) -> None:
        """An object as the API answered the operator's own create or update of it."""
        self.apply("MODIFIED", obj, own=True)

    def deleted(self, namespace: str, name: str, version: str = UNKNOWN) -> None:
        """The operator deleted the object (``version``: its last resourceVersion, when known)."""
        with self._lock:
            self._drop((namespace, name), version)

    # --- inside the lock --------------------------------------------------------------------------

    def _shape(self, obj: JSON) -> JSON:
        return self._transform(obj) if self._transform is not None else obj

    def _is_newer(self, key: Key, obj: JSON, own: bool) -> bool:
        version = version_of(obj)
        current = self._objects.get(key)
        if current is not None:
            return newer(version, version_of(current))
        if key in self._gone:
            gone = self._gone[key]
            if gone == UNKNOWN:
                # Deleted at an unknown version: a watch event may be of the old object (until the
                # watch's DELETED says which version was last); the operator's own write is new.
                return own
            return newer(version, gone)
        return True

    def _put(self, key: Key, obj: JSON) -> None:
        old = self._objects.get(key)
        if old is not None and self._index_of is not None:
            self._unindex(key, old)
        self._objects[key] = obj
        if self._index_of is not None:
            value = self._index_of(obj)
            if value is not None:
                self._index.setdefault((key[0], value), set()).add(key[1])

    def _unindex(self, key: Key, obj: JSON) -> None:
        assert self._index_of is not None
        value = self._index_of(obj)
        if value is None:
            return
        names = self._index.get((key[0], value))
        if names is not None:
            names.discard(key[1])
            if not names:
                del self._index[(key[0], value)]

    def _drop(self, key: Key, version: str) -> JSON | None:
        old = self._objects.pop(key, None)
        if old is not None and self._index_of is not None:
            self._unindex(key, old)
        known = self._gone.get(key)
        # A watch's DELETED event replaces an unknown tombstone with the deleted version.
        if known is None or known == UNKNOWN or (version and newer(version, known)):
            self._gone[key] = version
        self._gone.move_to_end(key)
        while len(self._gone) > MAX_TOMBSTONES:
            self._gone.popitem(last=False)
        return old


def label_index(label: str) -> Callable[[JSON], str | None]:
    """Index objects by the value of one of their labels."""

    def index(obj: JSON) -> str | None:
        value = ((obj.get("metadata") or {}).get("labels") or {}).get(label)
        return str(value) if value is not None else None

    return index
