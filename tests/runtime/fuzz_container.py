"""Fuzzing the ``.lowbit`` container reader (lowbit/runtime/container.py).

``mutants(rng, original)`` yields damaged files of three kinds: random bytes (some behind a
valid magic), raw mutations of a valid file (bit flips, byte overwrites, truncations,
insertions, deletions, appended bytes) and *re-sealed* header edits (a JSON value changed, a
key removed or added, a section record altered, then the header digest recomputed, so the
damage gets past the digest into the field checks). ``check(path, original)`` is the oracle:

- a raw mutation must give a FormatError or, only if the bytes are unchanged, the original;
- a re-sealed edit must give a FormatError or a result whose sections match their (edited)
  header records and whose digests verify -- never another exception.

Run as a script for a campaign: ``python tests/runtime/fuzz_container.py --n 50000``; the test
suite runs a short one (tests/runtime/test_container.py::test_fuzz_loader).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lowbit.runtime import FormatError, read_container, read_header, write_container
from lowbit.runtime.container import DTYPES, MAGIC, PREFIX


def sample_file(path: Path) -> bytes:
    sections = {"w": np.arange(37, dtype=np.uint8), "s": np.linspace(-1, 1, 5, dtype=np.float32),
                "z": np.zeros((0, 4), np.int16), "one": np.float64(2.5),
                "b": np.array([1, -2, 3], np.int32), "h": np.array([0.5, -0.0], np.float16),
                "big": np.arange(300, dtype=np.float32)}  # the rest are pooled (slices)
    meta = {"graph": [{"op": "linear", "in": "x", "w": "w"}], "bits": {"w": 3}, "n": None}
    write_container(path, sections, meta)
    return path.read_bytes()


def reseal(header: bytes, data: bytes = b"") -> bytes:
    """A file with ``header`` (its length and digest recomputed, padded to 64) and the data
    area ``data``: a header edit that gets past the digest."""
    head = MAGIC + struct.pack("<Q", len(header)) + hashlib.sha256(header).digest() + header
    return head + bytes(-len(head) % 64) + data


def split(original: bytes) -> tuple[bytes, bytes]:
    """(header bytes, data area) of a well-formed file."""
    (n,) = struct.unpack("<Q", original[8:16])
    return original[PREFIX: PREFIX + n], original[-(-(PREFIX + n) // 64) * 64:]


_VALUES = [None, True, -1, 0, 1, 63, 64, 2**64, 10**400, 1.5, "", "raw", "huffman", "uint16",
           [], [1], [2**62, 2**62], {}, {"a": 1}, "x" * 300]


def edit_json(rng: random.Random, header: dict) -> dict:
    """One structural edit somewhere in the header (in place on a copy)."""
    header = json.loads(json.dumps(header))
    nodes = [header]
    stack = [header]
    while stack:
        node = stack.pop()
        for child in (node.values() if isinstance(node, dict) else node):
            if isinstance(child, (dict, list)):
                nodes.append(child)
                stack.append(child)
    node = rng.choice(nodes)
    keys = list(node) if isinstance(node, dict) else list(range(len(node)))
    action = rng.random()
    if keys and action < 0.6:
        key = rng.choice(keys)
        old = node[key]
        if isinstance(old, int) and not isinstance(old, bool) and rng.random() < 0.5:
            node[key] = old + rng.choice([-64, -1, 1, 64, 2**40])
        else:
            node[key] = rng.choice(_VALUES)
    elif keys and action < 0.8:
        del node[rng.choice(keys)]
    elif isinstance(node, dict):
        node[rng.choice(["extra", "encoding", "offset", "meta", "version"])] = rng.choice(_VALUES)
    else:
        node.append(rng.choice(_VALUES))
    return header


def raw_mutation(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0:
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == 1:
        i = rng.randrange(len(b))
        b[i] = rng.randrange(256)
    elif kind == 2:
        del b[rng.randrange(len(b) + 1):]
    elif kind == 3:
        i = rng.randrange(len(b) + 1)
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 70)))
    elif kind == 4:
        i = rng.randrange(len(b))
        del b[i: i + rng.randint(1, 70)]
    else:
        b += bytes(rng.randint(1, 80))
    return bytes(b)


def random_bytes(rng: random.Random) -> bytes:
    body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
    if rng.random() < 0.5:
        return MAGIC + struct.pack("<Q", rng.choice([0, 2, len(body), 2**63, 2**30])) + body
    return body


def mutant(rng: random.Random, original: bytes) -> tuple[str, bytes]:
    """(kind, bytes): "raw" (bytes differ from the original only by damage) or "sealed"."""
    r = rng.random()
    if r < 0.1:
        return "raw", random_bytes(rng)
    if r < 0.55:
        return "raw", raw_mutation(rng, original)
    header, rest = split(original)
    if rng.random() < 0.15:  # textual damage inside the header, re-sealed
        text = bytearray(header)
        text[rng.randrange(len(text))] = rng.choice(b'{}[]",:0123456789-e.x ')
        return "sealed", reseal(bytes(text), rest)
    edited = edit_json(rng, json.loads(header))
    return "sealed", reseal(json.dumps(edited).encode(), rest)


def check(path: Path, kind: str, data: bytes, original: bytes, expect) -> str:
    """Read ``path`` (holding ``data``) and apply the oracle; return "error" or "ok"."""
    path.write_bytes(data)
    try:
        meta, sections = read_container(path, mmap=len(data) % 2 == 0)
    except FormatError:
        return "error"
    if kind == "raw" or data == original:
        assert data == original, "damaged bytes were accepted"
        assert meta == expect[0] and sections.keys() == expect[1].keys()
        for name, value in expect[1].items():
            assert sections[name].dtype == value.dtype and sections[name].shape == value.shape
            assert sections[name].tobytes() == value.tobytes()
        return "ok"
    header = read_header(path)
    table, slices = header["sections"], header["slices"]
    pools = {sl[0] for sl in slices.values()}
    assert sections.keys() == (table.keys() - pools) | slices.keys()
    for name, rec in table.items():
        if name not in pools:
            assert sections[name].shape == tuple(rec["shape"])
            assert sections[name].dtype == np.dtype(DTYPES[rec["dtype"]])
            assert hashlib.sha256(sections[name].tobytes()).hexdigest() == rec["sha256"]
    area = split(data)[1]
    for name, (pool, offset, shape) in slices.items():  # a slice is the bytes it names
        item = np.dtype(DTYPES[table[pool]["dtype"]]).itemsize
        start = table[pool]["offset"] + offset * item
        assert sections[name].shape == tuple(shape)
        assert sections[name].dtype == np.dtype(DTYPES[table[pool]["dtype"]])
        assert sections[name].tobytes() == area[start: start + item * math.prod(shape)]
    return "ok"


def campaign(n: int, seed: int, workdir: Path) -> dict[str, int]:
    rng = random.Random(seed)
    original = sample_file(workdir / "orig.lowbit")
    expect = read_container(workdir / "orig.lowbit")
    counts = {"inputs": 0, "error": 0, "ok": 0}
    target = workdir / "mutant.lowbit"
    for _ in range(n):
        kind, data = mutant(rng, original)
        counts[check(target, kind, data, original, expect)] += 1
        counts["inputs"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="inputs to try")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        counts = campaign(args.n, args.seed, Path(tmp))
    counts["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps({"seed": args.seed, **counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
