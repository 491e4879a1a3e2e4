"""Hypothesis strategies shared by the source parser tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
"""Any JSON value: what a hostile or confused sender could post."""

_DROP = object()


def mutated(
    valid: st.SearchStrategy[dict[str, Any]], fields: tuple[str, ...]
) -> st.SearchStrategy[dict[str, Any]]:
    """Valid objects with up to two fields replaced by arbitrary JSON (or dropped)."""
    names = st.sampled_from(fields) | st.text(max_size=8)
    changes = st.dictionaries(names, json_values | st.just(_DROP), max_size=2)
    return st.tuples(valid, changes).map(
        lambda pair: {
            name: value for name, value in {**pair[0], **pair[1]}.items() if value is not _DROP
        }
    )
