"""The in-memory store of API objects (kube/store.py): which of the versions of an object that reach
it, by watch or as the API's answer to the operator's own write, in any order, it keeps."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from hpo_operator.kube.store import Store, label_index

JSON = dict[str, Any]
LABEL = "hpo.dev/study"


def obj(
    version: str | int, name: str = "a", namespace: str = "ns", study: str | None = None, **extra: Any
) -> JSON:
    meta: JSON = {"name": name, "namespace": namespace, "resourceVersion": str(version)}
    if study is not None:
        meta["labels"] = {LABEL: study}
    return {"metadata": meta, **extra}


def stored_version(store: Store, name: str = "a") -> str | None:
    found = store.get("ns", name)
    return None if found is None else found["metadata"]["resourceVersion"]


# --- events and own writes ----------------------------------------------------------------------


def test_an_older_watch_event_after_a_newer_own_write_is_ignored() -> None:
    store = Store()
    assert store.apply("ADDED", obj(5)) is not None
    store.written(obj(8))
    assert store.apply("MODIFIED", obj(6)) is None
    assert store.apply("MODIFIED", obj(8)) is None  # the watch's copy of the own write: nothing new
    assert stored_version(store) == "8"
    change = store.apply("MODIFIED", obj(9))
    assert change is not None and change.type == "MODIFIED"
    assert stored_version(store) == "9"


def test_an_own_write_older_than_a_watch_event_is_ignored() -> None:
    store = Store()
    store.apply("ADDED", obj(7))
    store.written(obj(6))  # the answer of a write that the watch overtook
    assert stored_version(store) == "7"


def test_a_late_modified_after_deleted_is_ignored_and_a_recreation_is_taken() -> None:
    store = Store()
    store.apply("ADDED", obj(5))
    change = store.apply("DELETED", obj(7))
    assert change is not None and change.type == "DELETED"
    assert store.get("ns", "a") is None
    store.written(obj(6))  # an own write's answer, made before the deletion
    assert store.apply("MODIFIED", obj(6)) is None
    assert store.get("ns", "a") is None
    change = store.apply("ADDED", obj(9))  # the name made again
    assert change is not None and change.type == "ADDED"
    assert stored_version(store) == "9"


def test_a_deleted_event_older_than_the_stored_object_is_of_the_old_one() -> None:
    store = Store()
    store.written(obj(10))  # made again by the operator before the watch delivered the deletion
    assert store.apply("DELETED", obj(8)) is None
    assert stored_version(store) == "10"


def test_an_own_delete_without_a_version_ignores_the_old_objects_events_but_takes_the_own_recreate() -> None:
    store = Store()
    store.apply("ADDED", obj(5))
    store.deleted("ns", "a")  # answered by a Status: the last version is unknown
    assert store.get("ns", "a") is None
    assert store.apply("MODIFIED", obj(6)) is None  # the old object, being deleted
    assert store.get("ns", "a") is None
    store.written(obj(12))  # the operator makes it again
    assert stored_version(store) == "12"
    assert store.apply("MODIFIED", obj(6)) is None
    assert store.apply("DELETED", obj(7)) is None  # the old object's deletion, late
    assert stored_version(store) == "12"
    assert store.apply("ADDED", obj(12)) is None  # the watch's copy of the re-create
    change = store.apply("MODIFIED", obj(13))
    assert change is not None and change.type == "MODIFIED"


def test_the_watchs_deletion_gives_an_unknown_tombstone_its_version() -> None:
    store = Store()
    store.apply("ADDED", obj(5))
    store.deleted("ns", "a")
    store.apply("DELETED", obj(7))
    assert store.apply("MODIFIED", obj(6)) is None
    change = store.apply("ADDED", obj(9))  # made again by someone else: only the watch says so
    assert change is not None and stored_version(store) == "9"


def test_a_deletion_delivered_again_is_no_change() -> None:
    store = Store()
    store.apply("ADDED", obj(5))
    first = store.apply("DELETED", obj(7))
    assert first is not None and first.obj["metadata"]["resourceVersion"] == "5"  # as it was stored
    assert store.apply("DELETED", obj(7)) is None
    assert store.apply("DELETED", obj(6)) is None


def test_an_own_delete_with_a_known_version_ignores_older_events() -> None:
    store = Store()
    store.apply("ADDED", obj(5))
    store.deleted("ns", "a", "7")
    assert store.apply("MODIFIED", obj(6)) is None
    assert store.apply("ADDED", obj(8)) is not None


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=1, max_value=8).flatmap(
        lambda n: st.tuples(
            st.permutations(range(1, n + 1)),
            st.lists(st.booleans(), min_size=n, max_size=n),
            st.booleans(),
        )
    )
)
def test_versions_arriving_in_any_order_leave_the_newest(case: tuple[list[int], list[bool], bool]) -> None:
    """Versions 1..n of one object (the last a deletion, when ``deleted``), each delivered once, by
    watch or as an own write's answer, in any order: the store ends with what the newest says."""
    order, own, deleted = case
    n = len(order)
    store = Store()
    for index, mine in zip(order, own, strict=True):
        version = 5 + index  # 6 to 13: compared as text, "13" would be older than "9"
        if deleted and index == n:
            store.apply("DELETED", obj(version))
        elif mine:
            store.written(obj(version))
        else:
            store.apply("MODIFIED", obj(version))
    if deleted:
        assert store.get("ns", "a") is None
    else:
        assert stored_version(store) == str(5 + n)


# --- a listing ------------------------------------------------------------------------------------


def test_replace_removes_what_the_listing_lacks_and_keeps_what_was_written_after_it() -> None:
    store = Store()
    store.apply("ADDED", obj(3, "gone"))
    store.apply("ADDED", obj(4, "kept"))
    store.written(obj(12, "new"))  # made after the listing began
    store.written(obj(11, "kept"))  # changed after the listing began
    changes = store.replace([obj(4, "kept"), obj(5, "listed")], version="10")
    assert sorted((c.type, c.obj["metadata"]["name"]) for c in changes) == [
        ("ADDED", "listed"),
        ("DELETED", "gone"),
    ]
    assert {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in store.items()} == {
        "kept": "11",
        "new": "12",
        "listed": "5",
    }
    assert store.synced


def test_replace_takes_the_listed_version_over_an_older_stored_one() -> None:
    store = Store()
    store.apply("ADDED", obj(3))
    changes = store.replace([obj(6)], version="10")
    assert [(c.type, c.obj["metadata"]["resourceVersion"]) for c in changes] == [("MODIFIED", "6")]
    assert stored_version(store) == "6"


def test_replace_does_not_bring_back_what_was_deleted_after_the_listing() -> None:
    store = Store()
    store.apply("ADDED", obj(4))
    store.apply("DELETED", obj(12))  # the watch's deletion overtook the listing made at 10
    changes = store.replace([obj(4)], version="10")
    assert changes == []
    assert store.get("ns", "a") is None
    assert store.apply("MODIFIED", obj(4)) is None  # the tombstone newer than the listing stays


def test_replace_forgets_tombstones_older_than_the_listing() -> None:
    store = Store()
    store.apply("ADDED", obj(4))
    store.apply("DELETED", obj(6))
    store.replace([], version="10")
    # Without the tombstone an old version would be taken; with it, it would not.
    assert store.apply("MODIFIED", obj(5)) is not None


def test_replace_of_a_listing_that_holds_an_object_made_again_takes_it() -> None:
    store = Store()
    store.apply("ADDED", obj(4))
    store.apply("DELETED", obj(6))
    store.replace([obj(8)], version="10")  # deleted at 6, made again at 8
    assert stored_version(store) == "8"


# --- the index, the transform, versions that are not numbers --------------------------------------


def test_select_follows_the_label_when_it_changes() -> None:
    store = Store(index=label_index(LABEL))
    store.apply("ADDED", obj(1, "b", study="s"))
    store.apply("ADDED", obj(2, "a", study="s"))
    store.apply("ADDED", obj(3, "c", study="t"))
    store.apply("ADDED", obj(3, "d", namespace="other", study="s"))
    store.apply("ADDED", obj(3, "e"))  # no label: in no selection
    assert [o["metadata"]["name"] for o in store.select("ns", "s")] == ["a", "b"]
    store.apply("MODIFIED", obj(4, "b", study="t"))
    assert [o["metadata"]["name"] for o in store.select("ns", "s")] == ["a"]
    assert [o["metadata"]["name"] for o in store.select("ns", "t")] == ["b", "c"]
    store.apply("DELETED", obj(5, "c", study="t"))
    assert [o["metadata"]["name"] for o in store.select("ns", "t")] == ["b"]
    store.replace([obj(6, "a", study="t")], version="6")
    assert store.select("ns", "s") == []
    assert [o["metadata"]["name"] for o in store.select("ns", "t")] == ["a"]
    assert [o["metadata"]["name"] for o in store.select("other", "s")] == []


def test_the_transform_shapes_what_is_stored_from_events_writes_and_listings() -> None:
    def slim(o: JSON) -> JSON:
        return {"metadata": o["metadata"], "kept": o.get("kept")}

    store = Store(transform=slim)
    store.apply("ADDED", obj(1, "a", kept=1, dropped=True))
    store.written(obj(2, "b", kept=2, dropped=True))
    store.replace([obj(3, "c", kept=3, dropped=True)], version="")
    assert store.items() == [{"metadata": obj(3, "c")["metadata"], "kept": 3}]
    store.apply("MODIFIED", obj(4, "c", kept=4, dropped=True))
    assert store.get("ns", "c") == {"metadata": obj(4, "c")["metadata"], "kept": 4}


def test_versions_that_are_not_numbers_go_by_arrival() -> None:
    store = Store()
    store.apply("ADDED", obj("b7"))
    assert store.apply("MODIFIED", obj("a2")) is not None  # later arrival wins
    assert stored_version(store) == "a2"
    assert store.apply("MODIFIED", obj("a2")) is None  # the same version again: nothing new
    store.written(obj("x"))
    assert stored_version(store) == "x"
    change = store.apply("DELETED", obj("y"))  # a deletion carries a version of its own
    assert change is not None and change.type == "DELETED"
    assert store.get("ns", "a") is None
    assert store.apply("ADDED", obj("z")) is not None
    store.replace([obj("q")], version="")
    assert stored_version(store) == "q"


def test_synced_only_after_a_listing() -> None:
    store = Store()
    store.written(obj(1))
    assert (store.synced, store.wait_synced(0.0)) == (False, False)
    store.replace([], version="3")
    assert (store.synced, store.wait_synced(0.0)) == (True, True)
