"""Webhook bodies are read by pydantic's parser, with the standard library's results and errors."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest.body import parse_json
from shared.errors import MalformedBody
from tests.support.strategies import json_values

wide_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
"""JSON values and what Python writes beyond JSON: NaN, infinities, integers past 64 bits."""


def same(a: Any, b: Any) -> bool:
    """Equal, of the same types all the way down (1 is not 1.0), NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


@settings(max_examples=300)
@given(value=wide_values, ascii_only=st.booleans(), indent=st.sampled_from([None, 2]))
def test_any_body_python_writes_reads_as_the_standard_library_reads_it(
    value: Any, ascii_only: bool, indent: int | None
) -> None:
    body = json.dumps(value, ensure_ascii=ascii_only, indent=indent).encode()

    assert same(parse_json(body), json.loads(body))


@settings(max_examples=200)
@given(value=json_values)
def test_utf16_bodies_are_read_too(value: Any) -> None:
    body = json.dumps(value, ensure_ascii=False).encode("utf-16")

    assert same(parse_json(body), json.loads(body))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"a": 1, "a": 2}', {"a": 2}),  # the last of duplicate keys
        (b"\xef\xbb\xbf[1]", [1]),  # a byte-order mark
        (b'["\\ud83d\\ude00"]', ["\N{GRINNING FACE}"]),  # an escaped surrogate pair
        (b"[1e400, -1e400]", [math.inf, -math.inf]),
        (b"[123456789012345678901234567890]", [123456789012345678901234567890]),
    ],
)
def test_edge_cases_read_as_the_standard_library_reads_them(body: bytes, expected: Any) -> None:
    assert same(parse_json(body), expected)
    assert same(json.loads(body), expected)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "the request body is empty; expected a JSON object"),
        (b"  \n", "the request body is empty; expected a JSON object"),
        (b'["\\udfff"]', "the request body is not valid JSON text: it escapes half of a UTF-16"),
    ],
)
def test_empty_bodies_and_lone_surrogates_are_refused(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedBody) as refused:
        parse_json(body)

    assert str(refused.value).startswith(reason)


@pytest.mark.parametrize("body", [b"{", b"[1,]", b"[01]", b'{"a": "\xff"}', b"[NaN", b'"\x01"'])
def test_bodies_that_are_not_json_are_refused_with_the_standard_librarys_reason(
    body: bytes,
) -> None:
    with pytest.raises(MalformedBody) as refused:
        parse_json(body)

    assert str(refused.value) == f"the request body is not valid JSON: {stdlib_reason(body)}"


def stdlib_reason(body: bytes) -> str:
    try:
        json.loads(body)
    except ValueError as exc:
        return str(exc)
    raise AssertionError(f"the standard library reads {body!r}")
