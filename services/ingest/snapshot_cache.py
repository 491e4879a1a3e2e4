"""What the incident store last saw of each alert group, to compute the next change from.

A snapshot may be stale (another ingest instance, or the operator API, changed
the incident since): the store's commit checks it against Redis and answers what
is there instead, so a stale snapshot costs a retry, never a wrong change. The
cache only spares the store reading a group before changing it.

Snapshots keep the incident as its stored JSON, not as a model: one bytes object
each, which the garbage collector never has to look through (thousands of
incidents as models would make every full collection slow).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import ClassVar, Final

from services.ingest.incident_scripts import sha1_hex
from shared.contracts import Incident

CACHED_GROUPS: Final = 4096
"""Groups remembered at most (the least recently changed are forgotten first)."""


@dataclass(frozen=True)
class Snapshot:
    """A group's pointer and the incident it names, as seen."""

    pointed: str | None
    """The id the group's open-incident pointer named; "" for none, None when not read."""
    raw: bytes | None
    """The incident's stored JSON; None when it does not exist."""
    digest: str | None = field(init=False)
    """The SHA-1 of :attr:`raw`, which the commit compares."""

    NONE_OPEN: ClassVar[Snapshot]
    """The group has no open incident."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", None if self.raw is None else sha1_hex(self.raw))

    def incident(self) -> Incident | None:
        """The incident, parsed (each call parses it again)."""
        return None if self.raw is None else Incident.model_validate_json(self.raw)


Snapshot.NONE_OPEN = Snapshot("", None)


class SnapshotCache:
    """The last :class:`Snapshot` of each recently changed group, by its pointer key."""

    def __init__(self, size: int = CACHED_GROUPS) -> None:
        self._size = size
        self._snapshots: OrderedDict[str, Snapshot] = OrderedDict()

    def get(self, key: str) -> Snapshot | None:
        snapshot = self._snapshots.get(key)
        if snapshot is not None:
            self._snapshots.move_to_end(key)
        return snapshot

    def put(self, key: str, snapshot: Snapshot) -> None:
        self._snapshots[key] = snapshot
        self._snapshots.move_to_end(key)
        if len(self._snapshots) > self._size:
            self._snapshots.popitem(last=False)

    def forget(self, key: str) -> None:
        self._snapshots.pop(key, None)

    def __len__(self) -> int:
        return len(self._snapshots)
