"""What the store remembers of groups: bounded, least recently changed forgotten first."""

from __future__ import annotations

import hashlib

from services.ingest.snapshot_cache import Snapshot, SnapshotCache


def snapshot(n: int) -> Snapshot:
    return Snapshot(f"id{n}", f'{{"id": "id{n}"}}'.encode())


def test_a_snapshot_carries_the_sha1_the_commit_compares() -> None:
    raw = b'{"id": "abc"}'

    assert Snapshot("abc", raw).digest == hashlib.sha1(raw).hexdigest()
    assert Snapshot.NONE_OPEN.digest is None
    assert Snapshot.NONE_OPEN.incident() is None


def test_the_least_recently_used_group_is_forgotten_first() -> None:
    cache = SnapshotCache(size=2)
    cache.put("a", snapshot(1))
    cache.put("b", snapshot(2))
    assert cache.get("a") == snapshot(1)  # "a" is now the most recent

    cache.put("c", snapshot(3))

    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (snapshot(1), None, snapshot(3))
    assert len(cache) == 2


def test_a_forgotten_group_is_unknown() -> None:
    cache = SnapshotCache()
    cache.put("a", snapshot(1))

    cache.forget("a")
    cache.forget("never seen")

    assert cache.get("a") is None
