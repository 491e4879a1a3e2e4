"""Reading the loosely typed values redis-py returns, in one place."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DATA_FIELD = "__data__"


def as_text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def data_entries(raw: Any) -> list[tuple[str, bytes | str]]:
    """``(entry id, __data__ payload)`` for each entry of an XRANGE/XREVRANGE reply.

    Entries without a ``__data__`` field (or deleted ones) are skipped.
    """
    result: list[tuple[str, bytes | str]] = []
    for entry_id, fields in raw or ():
        payload = _data(fields) if isinstance(fields, Mapping) else None
        if payload is not None:
            result.append((as_text(entry_id), payload))
    return result


def str_keys(fields: Mapping[Any, Any]) -> dict[str, bytes | str]:
    """A hash reply with its keys decoded."""
    return {as_text(key): value for key, value in fields.items()}


def _data(fields: Mapping[Any, Any]) -> bytes | str | None:
    value = fields.get(DATA_FIELD.encode(), fields.get(DATA_FIELD))
    return value if isinstance(value, bytes | str) else None
