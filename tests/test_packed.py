"""The packed form of the container's extra dicts (aribbps.packed)."""
from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aribbps.errors import ArchiveError
from aribbps.packed import KNOWN_KEYS, Reader, pack_dict, read_dict

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**64, 2**64 - 1), st.text(max_size=8),
                    st.floats(allow_nan=False, allow_infinity=False))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(KNOWN_KEYS) | st.text(max_size=4), inner, max_size=4), max_leaves=20)
dicts = st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=6), values, max_size=5)


def unpack(data: bytes) -> dict[str, Any]:
    r = Reader(memoryview(data), "extra")
    out = read_dict(r, "extra")
    r.finish()
    return out


@settings(max_examples=300, deadline=None)
@given(dicts)
def test_round_trip_is_exact(d: dict[str, Any]) -> None:
    data = pack_dict(d, "extra")
    got = unpack(data)
    assert got == d
    assert [type(v) for v in got.values()] == [type(v) for v in d.values()]  # True stays a bool, 1.0 a float
    assert pack_dict(got, "extra") == data  # one encoding per value


def test_what_the_codec_stores_is_small() -> None:
    assert pack_dict({}, "x") == b"\x00"
    assert pack_dict({"qp": 9}, "x") == bytes([1, 1, 0, 9])
    assert pack_dict({"qp": [10, 9], "pad": [3]}, "x") == bytes([2, 1, 3, 2, 0, 10, 0, 9, 2, 3, 1, 0, 3])
    assert pack_dict({"alpha": "coded"}, "x") == bytes([1, 3, 2, 5]) + b"coded"
    assert pack_dict({"z": -1}, "x") == bytes([1, 0, 1]) + b"z" + bytes([1, 0])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_any_bytes_give_a_dict_or_an_archive_error(data: bytes) -> None:
    try:
        unpack(data)
    except ArchiveError:
        pass
