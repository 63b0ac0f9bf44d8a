"""pack_bits / unpack_bits / pack_codes / unpack_codes (lowbit/runtime/pack.py): round trips
for every bit width and shape, byte counts, the layout against a Python-int reference, and the
error cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lowbit.errors import BitsError, LowbitError
from lowbit.runtime import (
    FormatError,
    pack_bits,
    pack_codes,
    packed_bytes,
    unpack_bits,
    unpack_codes,
)

INT_DTYPES = [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.int64, np.uint64]


def reference_pack(codes, bits: int) -> bytes:
    """The layout by definition: code i at bits [i*bits, (i+1)*bits) of a little-endian
    integer."""
    acc = 0
    for i, c in enumerate(codes):
        acc |= int(c) << (i * bits)
    return acc.to_bytes((len(codes) * bits + 7) // 8, "little")


def reference_unpack(data: bytes, bits: int, count: int) -> list[int]:
    acc = int.from_bytes(data, "little")
    return [(acc >> (i * bits)) & ((1 << bits) - 1) for i in range(count)]


@st.composite
def codes_and_bits(draw, max_bits: int = 8, max_side: int = 9):
    bits = draw(st.integers(1, max_bits))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=max_side))
    dtype = draw(st.sampled_from([d for d in INT_DTYPES if np.iinfo(d).max >= 2**bits - 1]))
    codes = draw(hnp.arrays(dtype, shape, elements=st.integers(0, 2**bits - 1)))
    return codes, bits


@given(codes_and_bits())
@settings(max_examples=300, deadline=None)
def test_pack_matches_reference_and_round_trips(case):
    codes, bits = case
    packed = pack_bits(codes, bits)
    assert packed.dtype == np.uint8 and packed.ndim == 1
    assert packed.size == -(-codes.size * bits // 8) == packed_bytes(codes.size, bits)
    assert packed.tobytes() == reference_pack(codes.reshape(-1), bits)
    out = unpack_bits(packed, bits, codes.size)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out.reshape(codes.shape), codes)


@given(st.integers(1, 8), st.integers(0, 70), st.binary(min_size=70 * 8 // 8, max_size=80))
@settings(max_examples=200, deadline=None)
def test_unpack_any_bytes_matches_reference(bits, count, data):
    """Every byte string decodes as the definition says (unused high bits ignored)."""
    data = data[: -(-count * bits // 8)]
    count = len(data) * 8 // bits
    assert unpack_bits(data, bits, count).tolist() == reference_unpack(data, bits, count)


@pytest.mark.parametrize("bits", range(1, 9))
def test_every_bit_width_large_random(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2**bits, size=(37, 101, 3))
    packed = pack_bits(codes, bits)
    assert packed.size == -(-codes.size * bits // 8)
    np.testing.assert_array_equal(unpack_bits(packed.tobytes(), bits, codes.size),
                                  codes.reshape(-1))
    edge = np.array([0, 2**bits - 1] * 13)  # extremes, odd count
    np.testing.assert_array_equal(unpack_bits(pack_bits(edge, bits), bits, edge.size), edge)


def test_padding_bits_are_zero():
    assert pack_bits(np.array([1]), 3).tolist() == [1]
    assert pack_bits(np.array([7, 7, 7]), 3).tolist() == [0xFF, 0x01]
    assert pack_bits(np.array([1, 0, 1]), 1).tolist() == [0b101]


@given(codes_and_bits(max_bits=32))
@settings(max_examples=200, deadline=None)
def test_pack_codes_dispatch(case):
    codes, bits = case
    packed = pack_codes(codes, bits)
    assert packed.dtype == np.uint8 and packed.size == packed_bytes(codes.size, bits)
    if bits <= 8:
        assert packed.tobytes() == reference_pack(codes.reshape(-1), bits)
    else:
        width = 2 if bits <= 16 else 4
        assert packed.tobytes() == b"".join(int(c).to_bytes(width, "little")
                                            for c in codes.reshape(-1))
    out = unpack_codes(packed, bits, codes.size)
    assert out.dtype == (np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32)
    np.testing.assert_array_equal(out.reshape(codes.shape), codes)


def test_half_float_patterns_round_trip():
    x = np.array([0.0, -0.0, 1.5, np.inf, -np.inf, np.nan, 65504.0], dtype=np.float16)
    back = unpack_codes(pack_codes(x.view(np.uint16), 16), 16, x.size).view(np.float16)
    assert back.tobytes() == x.tobytes()


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_codes_out_of_range(bits):
    with pytest.raises(ValueError, match=rf"\[0, {2**bits}\)"):
        pack_bits(np.array([0, 2**bits]), bits)
    with pytest.raises(ValueError, match="-1"):
        pack_bits(np.array([0, -1]), bits)
    with pytest.raises(ValueError):
        pack_codes(np.array([2**bits]), bits)


def test_wide_codes_out_of_range():
    with pytest.raises(ValueError):
        pack_codes(np.array([2**9]), 9)
    with pytest.raises(ValueError):
        pack_codes(np.array([-1]), 20)
    stored = np.array([2**9], dtype="<u2").view(np.uint8)  # a damaged 9-bit code
    with pytest.raises(FormatError, match="2\\^9"):
        unpack_codes(stored, 9, 1)


@pytest.mark.parametrize("bits", [0, 9, -1, 2.0, True, "4", None])
def test_bad_bits(bits):
    with pytest.raises(BitsError, match="bits"):
        pack_bits(np.array([0]), bits)
    with pytest.raises(BitsError, match="bits"):
        unpack_bits(b"\0", bits, 1)


@pytest.mark.parametrize("bits", [0, 33])
def test_bad_bits_codes(bits):
    with pytest.raises(BitsError, match="1..32"):
        pack_codes(np.array([0]), bits)
    with pytest.raises(BitsError):
        unpack_codes(b"\0", bits, 1)


@pytest.mark.parametrize("codes", [np.array([0.0, 1.0]), np.array([True, False]),
                                   np.array(["1"])])
def test_non_integer_codes(codes):
    with pytest.raises(TypeError, match="integer"):
        pack_bits(codes, 2)


@pytest.mark.parametrize("bits,count", [(3, 3), (1, 9), (8, 2), (5, 8), (16, 1), (24, 1)])
def test_truncated_data(bits, count):
    need = packed_bytes(count, bits)
    data = bytes(need - 1)
    with pytest.raises(FormatError, match=f"need {need} bytes, got {need - 1}") as info:
        unpack_codes(data, bits, count)
    assert isinstance(info.value, LowbitError)


def test_unpack_arguments():
    with pytest.raises(ValueError, match="count"):
        unpack_bits(b"\0", 2, -1)
    with pytest.raises(TypeError, match="uint8"):
        unpack_bits(np.zeros(2, dtype=np.int16), 2, 1)
    assert unpack_bits(b"", 5, 0).size == 0
    assert unpack_bits(b"\xff\xff", 4, 1).tolist() == [15]  # extra bytes are ignored
