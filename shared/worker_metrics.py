"""What a ``/metrics`` endpoint answers: one registry, or the sum over worker processes.

A service run as several workers (:func:`shared.serving.serve_workers`) sets
``PROMETHEUS_MULTIPROC_DIR`` before they start. prometheus_client reads that variable
once, when it is first imported, and then keeps every metric's values in a file per
process in that directory; ``/metrics`` of any worker then reads all the files
(counters and histograms summed over the workers, a worker that died included).
Without the variable each app keeps its metrics in its own registry, in memory, and
shows them.
"""

from __future__ import annotations

import os
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROCESS_DIR: Final = "PROMETHEUS_MULTIPROC_DIR"


def exposed_registry(own: CollectorRegistry) -> CollectorRegistry:
    """``own``, or a registry of every worker's metrics when they are kept in files."""
    directory = os.environ.get(MULTIPROCESS_DIR)
    if not directory:
        return own
    if not getattr(values.ValueClass, "_multiprocess", False):
        raise RuntimeError(
            f"{MULTIPROCESS_DIR} was set after prometheus_client was imported: "
            "this process keeps its metrics in memory, where the other workers cannot see them"
        )
    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=directory)  # type: ignore[no-untyped-call]
    return merged


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The text a ``/metrics`` endpoint answers for ``registry``, and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
