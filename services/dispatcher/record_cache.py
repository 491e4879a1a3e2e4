"""The dispatch records a worker sends from, remembered for a few seconds.

A fan-out's thousands of jobs all send one rendering: loading and decoding it from
Redis once per job would cost a round trip and a JSON parse each. A loaded record is
kept for ``ttl`` seconds (the ``keep`` most recent ones), and jobs that ask for the
same record while it loads wait for that one load. Only found records are kept: a
rendering saved later (an approval's) or one that expired is seen at the next look,
and a kept one is never older than ``ttl``, far below the records' retention.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from services.dispatcher.dispatch_record import DispatchRecords, Rendering
from shared.contracts import Incident

DEFAULT_TTL_SECONDS: Final = 5.0
DEFAULT_KEEP: Final = 256

Loaded = tuple[Incident, Rendering] | None
_Key = tuple[str, str, str]


class CachedRecords:
    def __init__(
        self,
        records: DispatchRecords,
        *,
        ttl: float = DEFAULT_TTL_SECONDS,
        keep: int = DEFAULT_KEEP,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._records = records
        self._ttl = ttl
        self._keep = keep
        self._monotonic = monotonic
        self._kept: OrderedDict[_Key, tuple[float, tuple[Incident, Rendering]]] = OrderedDict()
        self._loading: dict[_Key, asyncio.Future[Loaded]] = {}

    async def load(self, event_id: str, audience: str, channel: str) -> Loaded:
        """What :meth:`DispatchRecords.load` answers, at most ``ttl`` seconds old."""
        key = (event_id, audience, channel)
        kept = self._fresh(key)
        if kept is not None:
            return kept
        loading = self._start(key)
        return await asyncio.shield(loading)  # a cancelled job leaves the load to the others

    def prefetch(self, event_id: str, audience: str, channel: str) -> None:
        """Start loading the record unless it is kept or loading: a job that asks for it
        while it claims its delivery gets it without a round trip of its own. A failed
        load is only forgotten (the next :meth:`load` tries again)."""
        key = (event_id, audience, channel)
        if self._fresh(key) is None:
            self._start(key)

    def _fresh(self, key: _Key) -> tuple[Incident, Rendering] | None:
        kept = self._kept.get(key)
        if kept is None:
            return None
        if self._monotonic() - kept[0] < self._ttl:
            return kept[1]
        del self._kept[key]
        return None

    def _start(self, key: _Key) -> asyncio.Future[Loaded]:
        loading = self._loading.get(key)
        if loading is None:  # one load, shared by every job that asks meanwhile
            loading = asyncio.ensure_future(self._records.load(*key))
            self._loading[key] = loading
            loading.add_done_callback(lambda done: self._loaded(key, done))
        return loading

    def _loaded(self, key: _Key, done: asyncio.Future[Loaded]) -> None:
        del self._loading[key]
        if done.cancelled() or done.exception() is not None:
            return
        loaded = done.result()
        if loaded is not None:
            self._keep_record(key, loaded)

    def _keep_record(self, key: _Key, loaded: tuple[Incident, Rendering]) -> None:
        self._kept[key] = (self._monotonic(), loaded)
        self._kept.move_to_end(key)
        while len(self._kept) > self._keep:
            self._kept.popitem(last=False)
