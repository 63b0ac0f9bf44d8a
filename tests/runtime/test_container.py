"""The .lowbit container (lowbit/runtime/container.py, docs/format.md): round trips, the
byte layout parsed by hand, atomic writes, every named error, and a fuzzed loader."""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowbit.errors import LowbitError
from lowbit.runtime import FormatError, read_container, read_header, write_container
from lowbit.runtime.container import DTYPES, MAGIC, tensor_bytes

sys.path.insert(0, str(Path(__file__).parent))
import fuzz_container as fuzz  # noqa: E402

ALL = {"u8": np.arange(200, dtype=np.uint8).reshape(10, 20), "i8": np.array([-128, 0, 127],
       np.int8), "i16": np.array([[-32768, 7]], np.int16), "i32": np.int32(-5),
       "f16": np.array([np.inf, -0.0, 0.1], np.float16), "f32": np.arange(7, dtype=np.float32),
       "f64": np.array([np.nan, 1e300]), "bf": np.array([0x3F80, 0xFFFF], np.uint16),
       "empty": np.zeros((3, 0), np.float32), "none": np.zeros(0, np.uint8)}
META = {"graph": [{"op": "linear", "w": "u8"}], "x": 0.1, "deep": {"a": [1, None, True, "é"]}}


def assert_same(sections, expected):
    assert sorted(sections) == sorted(expected)  # pooled tensors come after the sections
    for name, value in expected.items():
        got = sections[name]
        assert got.shape == value.shape, name
        assert got.dtype == np.dtype(value.dtype).newbyteorder("<"), name
        assert got.tobytes() == value.astype(got.dtype).tobytes(), name


@pytest.mark.parametrize("pool_below", [0, 1024])
@pytest.mark.parametrize("mmap", [False, True])
def test_round_trip_all_dtypes(tmp_path, mmap, pool_below):
    path = tmp_path / "a.lowbit"
    write_container(path, ALL, META, bfloat16=["bf"], pool_below=pool_below)
    meta, sections = read_container(path, mmap=mmap)
    assert meta == META
    assert_same(sections, ALL)
    assert sections["i32"].shape == ()
    header = read_header(path)
    if pool_below:  # every tensor here is small: all pooled, one pool per dtype
        assert header["slices"]["bf"][0] == "pool.bfloat16"
        assert header["sections"]["pool.bfloat16"]["dtype"] == "bfloat16"
        assert sorted(header["sections"]) == sorted(f"pool.{d}" for d in DTYPES)
    else:
        assert header["sections"]["bf"]["dtype"] == "bfloat16" and header["slices"] == {}
    assert tensor_bytes(header) == {k: np.asarray(v).nbytes for k, v in ALL.items()}


def test_pooling_layout_and_version_1(tmp_path):
    """docs/format.md, "Small tensors": a pool is its tensors' bytes back to back in the order
    written; a version 1 file (no slices) is still read."""
    path = tmp_path / "p.lowbit"
    small = {"s": np.float32(3), "v": np.arange(4, dtype=np.float32),
             "big": np.arange(300, dtype=np.float32), "c": np.arange(5, dtype=np.uint8)}
    write_container(path, small, {})
    header = read_header(path)
    assert header["version"] == 2 and set(header["sections"]) == {"big", "pool.float32",
                                                                   "pool.uint8"}
    assert header["slices"] == {"s": ["pool.float32", 0, []], "v": ["pool.float32", 1, [4]],
                                "c": ["pool.uint8", 0, [5]]}
    sections = read_container(path).sections
    raw, pool = path.read_bytes(), header["sections"]["pool.float32"]
    start = -(-(48 + len(fuzz.split(raw)[0])) // 64) * 64 + pool["offset"]
    assert raw[start: start + pool["length"]] == np.array([3, 0, 1, 2, 3], "<f4").tobytes()
    assert "pool.float32" not in sections
    assert sections["v"].tolist() == [0, 1, 2, 3] and sections["s"].shape == ()
    write_container(path, small, {"old": 1}, pool_below=0)
    header, rest = fuzz.split(path.read_bytes())
    obj = json.loads(header)
    obj["version"] = 1
    del obj["slices"]
    path.write_bytes(fuzz.reseal(json.dumps(obj).encode(), rest))
    meta, sections = read_container(path)
    assert meta == {"old": 1}
    assert_same(sections, small)
    with pytest.raises(ValueError, match="reserved"):
        write_container(path, {"pool.uint8": np.zeros(2, np.uint8)}, {})


def test_no_sections_and_big_endian(tmp_path):
    path = tmp_path / "e.lowbit"
    write_container(path, {}, {})
    assert read_container(path) == ({}, {})
    assert path.stat().st_size % 64 == 0
    big = np.arange(5, dtype=">i4")
    write_container(path, {"b": big}, {})
    assert read_container(path).sections["b"].tolist() == big.tolist()


def test_layout_matches_format_md(tmp_path):
    """docs/format.md, "Layout", parsed by hand."""
    path = tmp_path / "l.lowbit"
    sections = {"a": np.arange(3, dtype=np.int16), "b": np.ones((2, 2), np.float32),
                "c": np.zeros(0, np.uint8), "d": np.array([7], np.uint8)}
    write_container(path, sections, {"k": 1}, pool_below=0)
    raw = path.read_bytes()
    assert raw[:8] == b"\x89LOWBIT\n" == MAGIC
    (n,) = struct.unpack("<Q", raw[8:16])
    header_bytes = raw[48: 48 + n]
    assert raw[16:48] == hashlib.sha256(header_bytes).digest()
    header = json.loads(header_bytes.decode("utf-8"))
    assert list(header) == ["format", "version", "sections", "slices", "meta"]
    assert header["format"] == "lowbit" and header["version"] == 2 and header["meta"] == {"k": 1}
    assert header["slices"] == {}
    start = -(-(48 + n) // 64) * 64
    assert raw[48 + n: start] == bytes(start - 48 - n)
    end = 0
    for name, value in sections.items():
        rec = header["sections"][name]
        assert set(rec) == {"offset", "length", "dtype", "shape", "sha256", "encoding"}
        assert rec["encoding"] == "raw" and rec["dtype"] == value.dtype.name
        assert rec["offset"] == -(-end // 64) * 64 and (start + rec["offset"]) % 64 == 0
        assert raw[start + end: start + rec["offset"]] == bytes(rec["offset"] - end)
        data = raw[start + rec["offset"]: start + rec["offset"] + rec["length"]]
        assert data == value.astype(value.dtype.newbyteorder("<")).tobytes()
        assert rec["sha256"] == hashlib.sha256(data).hexdigest()
        assert rec["shape"] == list(value.shape)
        end = rec["offset"] + rec["length"]
    assert len(raw) == start + end


def test_format_md_names_the_constants():
    doc = (Path(__file__).parents[2] / "docs" / "format.md").read_text(encoding="utf-8")
    assert "89 4C 4F 57 42 49 54 0A" in doc
    for name in DTYPES:
        assert f"`{name}`" in doc


def test_atomic_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.lowbit"
    write_container(path, {"a": np.arange(4, dtype=np.int8)}, {"v": 1})
    before = path.read_bytes()

    def boom(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="No space"):
        write_container(path, {"a": np.arange(9, dtype=np.int8)}, {"v": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.lowbit"]  # no temporary left behind


def test_write_refuses(tmp_path):
    path = tmp_path / "r.lowbit"
    for bad in [np.zeros(2, np.int64), np.zeros(2, bool), np.zeros(2, np.uint16),
                np.zeros(1, complex), np.array(["a"])]:
        with pytest.raises(TypeError, match="dtype"):
            write_container(path, {"x": bad}, {})
    with pytest.raises(TypeError, match="bfloat16"):
        write_container(path, {"x": np.zeros(2, np.float32)}, {}, bfloat16=["x"])
    with pytest.raises(ValueError, match="JSON"):
        write_container(path, {}, {"x": float("nan")})
    with pytest.raises(ValueError, match="JSON"):
        write_container(path, {}, {"x": object()})
    with pytest.raises(TypeError, match="meta"):
        write_container(path, {}, [1])
    assert not path.exists()


@pytest.fixture
def valid(tmp_path):
    path = tmp_path / "v.lowbit"
    write_container(path, {"z": np.zeros((2, 0), np.int16), "a": np.arange(10, dtype=np.float32),
                           "b": np.arange(3, dtype=np.int8)}, {"m": 1}, pool_below=0)
    return path


@pytest.fixture
def pooled(tmp_path):
    path = tmp_path / "p.lowbit"
    write_container(path, {"a": np.arange(10, dtype=np.float32), "s": np.float32(2),
                           "big": np.zeros(400, np.float32), "m2": np.ones((40, 40), np.int8)},
                    {"m": 1})
    return path


def rewrite(path: Path, edit) -> None:
    """Apply ``edit`` to the parsed header, re-seal the digest, keep the data bytes."""
    header, rest = fuzz.split(path.read_bytes())
    obj = json.loads(header)
    edit(obj)
    path.write_bytes(fuzz.reseal(json.dumps(obj).encode(), rest))


def a(obj):
    return obj["sections"]["a"]


CASES = [
    ("bad magic", lambda b: b"PK\x03\x04" + b[4:], "not a lowbit file"),
    ("truncated prefix", lambda b: b[:20], "shorter than the 48-byte prefix"),
    ("header beyond file", lambda b: b[:8] + struct.pack("<Q", 10**6) + b[16:],
     "reaches beyond"),
    ("header over limit", lambda b: b[:8] + struct.pack("<Q", 2**62) + b[16:], "exceeds"),
    ("header damaged", lambda b: b[:60] + bytes([b[60] ^ 1]) + b[61:], "header's sha256"),
    ("data damaged", lambda b: b[:-1] + bytes([b[-1] ^ 4]), "section 'b' is damaged"),
    ("truncated data", lambda b: b[:-1], "truncated"),
    ("trailing bytes", lambda b: b + b"\0", "after the last section"),
    ("padding not zero", lambda b: b[:-10] + b"\1" + b[-9:], "padding before"),  # a..b gap
]


@pytest.mark.parametrize("what,damage,message", CASES, ids=[c[0] for c in CASES])
def test_damaged_bytes(valid, what, damage, message):
    valid.write_bytes(damage(valid.read_bytes()))
    with pytest.raises(FormatError, match=message) as info:
        read_container(valid)
    assert str(valid) in str(info.value) and isinstance(info.value, LowbitError)


def _set(key, value, where=a):
    def edit(obj):
        where(obj)[key] = value
    return edit


def _header_text(text: bytes):
    def damage(path):
        rest = fuzz.split(path.read_bytes())[1]
        path.write_bytes(fuzz.reseal(text, rest))
    return damage


EDITS = [
    ("wrong version", _set("version", 3, lambda o: o), "format version 3"),
    ("version 1 with slices", _set("version", 1, lambda o: o), "unknown \\['slices'\\]"),
    ("version bool", _set("version", True, lambda o: o), "format version True"),
    ("wrong format", _set("format", "onnx", lambda o: o), "not 'lowbit'"),
    ("missing key", lambda o: o.pop("meta"), "missing \\['meta'\\]"),
    ("unknown key", _set("x", 1, lambda o: o), "unknown \\['x'\\]"),
    ("meta not object", _set("meta", [1], lambda o: o), "must be JSON objects"),
    ("unknown encoding", _set("encoding", "huffman"), "encoding 'huffman' is unknown"),
    ("record key missing", lambda o: a(o).pop("sha256"), "missing \\['sha256'\\]"),
    ("negative offset", _set("offset", -64), "non-negative"),
    ("misaligned", _set("offset", 8), "not a multiple of 64"),
    ("out of bounds", _set("offset", 640), "out of bounds"),
    ("overlap", _set("offset", 0, lambda o: o["sections"]["b"]), "overlaps"),
    ("bad dtype", _set("dtype", "int64"), "dtype 'int64' is not one of"),
    ("shape x itemsize", _set("shape", [11]), "is 44 bytes, but its length is 40"),
    ("huge shape", _set("shape", [2**62, 2**62]), "too large"),
    ("empty but huge", _set("shape", [2**62, 0], lambda o: o["sections"]["z"]), "too large"),
    ("shape not ints", _set("shape", [2.5]), "non-negative integers"),
    ("checksum", _set("sha256", "0" * 64), "section 'a' is damaged"),
    ("bad digest text", _set("sha256", "xyz"), "64 lowercase hex"),
]


@pytest.mark.parametrize("what,edit,message", EDITS, ids=[c[0] for c in EDITS])
def test_header_errors(valid, what, edit, message):
    rewrite(valid, edit)
    with pytest.raises(FormatError, match=message):
        read_container(valid)


def _slice(name, value):
    def edit(obj):
        obj["slices"][name] = value
    return edit


SLICE_EDITS = [
    ("slices missing", lambda o: o.pop("slices"), "missing \\['slices'\\]"),
    ("slices not object", _set("slices", [1], lambda o: o), "must be JSON objects"),
    ("not a triple", _slice("a", ["pool.float32", 0]), "must be \\[pool section"),
    ("unknown pool", _slice("a", ["pool.int8", 0, [10]]), "'pool.int8' does not exist"),
    ("pool not 1-d", _slice("a", ["m2", 0, [1]]), "'m2' is not 1-d"),
    ("outside pool", _slice("a", ["pool.float32", 5, [7]]), "elements 5..12 are outside"),
    ("negative offset", _slice("a", ["pool.float32", -1, [1]]), "non-negative integer"),
    ("shape not ints", _slice("a", ["pool.float32", 0, [1.5]]), "non-negative integer"),
    ("empty but huge", _slice("a", ["pool.float32", 0, [2**62, 2**62, 0]]), "too large"),
    ("clashes with a section", _slice("big", ["pool.float32", 0, [1]]), "a section has"),
]


@pytest.mark.parametrize("what,edit,message", SLICE_EDITS, ids=[c[0] for c in SLICE_EDITS])
def test_slice_errors(pooled, what, edit, message):
    rewrite(pooled, edit)
    with pytest.raises(FormatError, match=message):
        read_container(pooled)


def test_pool_damage_is_caught(pooled):
    raw = bytearray(pooled.read_bytes())
    raw[-1] ^= 1  # the last section is the float32 pool (pools are written last)
    pooled.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="section 'pool.float32' is damaged"):
        read_container(pooled)


@pytest.mark.parametrize("text,message", [
    (b"{not json", "not JSON"), (b"[1, 2]", "JSON list, not an object"),
    (b"\xff\xfe", "not JSON: UnicodeDecodeError"), (b"[" * 100000 + b"]" * 100000, "not JSON"),
    (b'{"format": NaN}', "not JSON"), (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
])
def test_header_not_json(valid, text, message):
    _header_text(text)(valid)
    with pytest.raises(FormatError, match=message):
        read_container(valid)


def test_gap_between_sections(valid):
    header, rest = fuzz.split(valid.read_bytes())
    obj = json.loads(header)
    obj["sections"]["b"]["offset"] = 128  # b moved one block on, the block of zeros between
    valid.write_bytes(fuzz.reseal(json.dumps(obj).encode(), rest[:64] + bytes(64) + rest[64:]))
    with pytest.raises(FormatError, match="at offset 128: expected 64"):
        read_container(valid)


def test_missing_file_and_verify_off(tmp_path, valid):
    with pytest.raises(FormatError, match="no such file"):
        read_container(tmp_path / "nope.lowbit")
    rewrite(valid, _set("sha256", "0" * 64))
    assert read_container(valid, verify=False).sections["a"].size == 10


# -- fuzzing ------------------------------------------------------------------------------

TRIED = {"inputs": 0, "error": 0, "ok": 0}
FIXTURE = [HealthCheck.function_scoped_fixture]  # the module-scoped sample is read-only


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "orig.lowbit"
    original = fuzz.sample_file(path)
    return path.parent, original, read_container(path)


@given(data=st.binary(max_size=300))
@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURE)
def test_fuzz_random_bytes(sample, data):
    workdir, original, expect = sample
    for blob in (data, MAGIC + data):
        TRIED[fuzz.check(workdir / "m.lowbit", "raw", blob, original, expect)] += 1
        TRIED["inputs"] += 1


@given(seed=st.integers(0, 2**32))
@settings(max_examples=400, deadline=None, suppress_health_check=FIXTURE)
def test_fuzz_mutations(sample, seed):
    workdir, original, expect = sample
    kind, data = fuzz.mutant(random.Random(seed), original)
    TRIED[fuzz.check(workdir / "m.lowbit", kind, data, original, expect)] += 1
    TRIED["inputs"] += 1


def test_fuzz_count_recorded(capsys):
    """Runs after the two fuzz tests (file order): the count is printed for the report."""
    with capsys.disabled():
        print(f"\nfuzzed loader inputs: {TRIED}")
    assert TRIED["inputs"] >= 100 or not TRIED["inputs"]
