"""model.pt and checkpoint.pt are verified on load (issue 7 item 6) and a full disk while
writing them is a clear error that keeps the previous file (issue 7 item 10).

The damage tests flip one bit at a few hundred offsets spread over the whole file (and at every
offset of its first and last 64 bytes) and truncate it at many lengths; each load must raise
``CheckpointError`` naming the file, or return exactly what was saved. The comparison is an
independent deep walk, not the digest the reader checks.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import torch
from train_synthetic import make_data, make_model

from lowbit.errors import CheckpointError
from lowbit.experiment import Job, load_model, save_model
from lowbit.models import build_model
from lowbit.recipe import Recipe
from lowbit.train import TrainConfig, atomic_save, fit, load_checkpoint
from lowbit.train.files import load_verified

KWARGS = {"name": "lenet300", "in_channels": 1, "image_size": 28, "num_classes": 10,
          "mean": [0.1307], "std": [0.3081]}
RECIPE = Recipe(weight="ivan", w_bits=4, act="ivan", a_bits=4)


def _same(a: object, b: object) -> bool:
    """Deep equality of loaded content: types, keys in order, tensors bit for bit."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return (a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
                and a.requires_grad == b.requires_grad
                and a.contiguous().view(-1).view(torch.uint8).equal(
                    b.contiguous().view(-1).view(torch.uint8)))
    if isinstance(a, dict):
        return (list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
                and _same(getattr(a, "_metadata", None), getattr(b, "_metadata", None)))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and a != a:
        return b != b
    return a == b


def _without_digest(blob: dict) -> dict:
    return {k: v for k, v in blob.items() if k != "sha256"}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    from lowbit.convert import quantize

    torch.manual_seed(0)
    net = quantize(build_model(**KWARGS), RECIPE)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(net, KWARGS, Job(model="lenet300", dataset="mnist", recipe=RECIPE), path)
    return path


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    fit(make_model(), make_data(48, seed=0), make_data(16, seed=1),
        TrainConfig(epochs=1, batch_size=16, optimizer="adam"), out, progress=False)
    return out / "checkpoint.pt"


def _offsets(size: int, count: int = 200) -> list[int]:
    spread = {i * (size - 1) // (count - 1) for i in range(count)}
    return sorted(spread | set(range(64)) | set(range(size - 64, size)))


def _outcomes(path: Path, damaged: list[bytes], load) -> dict[str, list[int]]:
    """Load each damaged copy of ``path``; sort the indices into raised / same / silent."""
    original = path.read_bytes()
    reference = load(path)
    result: dict[str, list[int]] = {"raised": [], "same": [], "silent": [], "other": []}
    try:
        for index, data in enumerate(damaged):
            path.write_bytes(data)
            try:
                loaded = load(path)
            except CheckpointError as exc:
                result["raised"].append(index)
                assert path.name in str(exc), exc
            except Exception:  # noqa: BLE001 - a raw traceback is a failure too; counted
                result["other"].append(index)
            else:
                result["same" if _same(loaded, reference) else "silent"].append(index)
    finally:
        path.write_bytes(original)
    return result


def _load_model_blob(path: Path) -> dict:
    net, blob = load_model(path)
    return {"blob": _without_digest(blob), "weights": net.state_dict()}


def _load_checkpoint_content(path: Path) -> dict:
    return _without_digest(load_checkpoint(path))


LOADERS = {"model.pt": ("model_file", _load_model_blob),
           "checkpoint.pt": ("checkpoint_file", _load_checkpoint_content)}


def _record_bytes(path: Path) -> set[int]:
    """The offsets of the stored bytes of every record of the zip file at ``path``."""
    import zipfile

    offsets: set[int] = set()
    with zipfile.ZipFile(path) as archive, path.open("rb") as handle:
        for info in archive.infolist():
            handle.seek(info.header_offset + 26)
            name_length, extra_length = struct.unpack("<HH", handle.read(4))
            start = info.header_offset + 30 + name_length + extra_length
            offsets.update(range(start, start + info.compress_size))
    return offsets


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ (1 << offset % 8)]) + data[offset + 1:]


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_a_flipped_bit_anywhere_never_loads_as_other_content(request, name) -> None:
    fixture, load = LOADERS[name]
    path = request.getfixturevalue(fixture)
    data = path.read_bytes()
    offsets = _offsets(len(data))
    result = _outcomes(path, [_flip(data, o) for o in offsets], load)
    counts = {k: len(v) for k, v in result.items()}
    assert not result["silent"] and not result["other"], (
        f"{counts}; silent at offsets {[offsets[i] for i in result['silent']][:20]}, "
        f"other errors at {[offsets[i] for i in result['other']][:20]}")
    # A flip inside any record's stored bytes (the pickle, every tensor, the version and
    # byteorder records) raises; the flips that load are in zip bookkeeping no reader uses
    # (alignment padding, timestamps, the local copies of central-directory fields, ...).
    stored = _record_bytes(path)
    assert not [offsets[i] for i in result["same"] if offsets[i] in stored], counts
    assert sum(offset in stored for offset in offsets) >= 100, "too few flips in stored bytes"


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_a_truncated_file_raises(request, name) -> None:
    fixture, load = LOADERS[name]
    path = request.getfixturevalue(fixture)
    size = path.stat().st_size
    lengths = sorted({i * (size - 1) // 99 for i in range(100)} | {size - 1, size - 22})
    result = _outcomes(path, [path.read_bytes()[:n] for n in lengths], load)
    assert len(result["raised"]) == len(lengths), {k: len(v) for k, v in result.items()}


def test_the_digest_catches_what_the_zip_layer_accepts(tmp_path, checkpoint_file) -> None:
    """A changed weight in an otherwise valid file (re-saved by torch, so every zip CRC is
    right) is caught by the content digest."""
    state = torch.load(checkpoint_file, weights_only=True)
    assert len(state["sha256"]) == 64
    state["model"]["1.weight"][0, 0] += 1e-3
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"checkpoint.pt.*sha256"):
        load_checkpoint(tmp_path / "checkpoint.pt")


def test_the_digest_tells_apart_what_loads_differently() -> None:
    from lowbit.train.files import content_digest

    variants = [{"a": 1}, {"a": True}, {"a": 1.0}, {"a": "1"}, {"a": [1]}, {"a": (1,)},
                {"b": 1}, {1: 1}, {"a": 1, "b": 2}, {"b": 2, "a": 1}, {"a": torch.ones(1)},
                {"a": torch.ones(1, dtype=torch.float64)}, {"a": torch.ones(1, 1)},
                {"a": torch.ones(2, 2).t()}, {"a": torch.ones(2, 2)}, {"a": None}]
    assert len({content_digest(v) for v in variants}) == len(variants)
    with pytest.raises(TypeError, match=r"set at \['a'\]"):
        content_digest({"a": {1}})


def test_files_stay_plain_torch_dicts(model_file, checkpoint_file) -> None:
    blob = torch.load(model_file, weights_only=True)
    assert blob["format"] == "lowbit-model" and "state_dict" in blob
    assert torch.load(checkpoint_file, weights_only=True)["epoch"] == 1


def test_a_file_without_digest_loads_with_a_warning(tmp_path, model_file, caplog) -> None:
    blob = _without_digest(torch.load(model_file, weights_only=True))
    torch.save(blob, tmp_path / "model.pt")
    with caplog.at_level(logging.WARNING, logger="lowbit.train.files"):
        net, loaded = load_model(tmp_path / "model.pt")
    assert "cannot be verified" in caplog.text and "model.pt" in caplog.text
    assert _same(_without_digest(loaded), blob)


def test_missing_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="model.pt does not exist"):
        load_model(tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="checkpoint.pt does not exist"):
        load_checkpoint(tmp_path / "checkpoint.pt")


# ---- a full disk ---------------------------------------------------------------------------

NO_SPACE = r"no space left on device while writing .*model.pt; the previous model.pt is kept"


def _write_old(path: Path) -> bytes:
    atomic_save({"a": torch.arange(3)}, path)
    return path.read_bytes()


def _assert_kept(path: Path, old: bytes) -> None:
    assert path.read_bytes() == old
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.mark.parametrize(("after", "raised"), [(0, OSError), (100, RuntimeError),
                                               (4096, RuntimeError), (100_000, RuntimeError)])
def test_disk_full_in_a_write_keeps_the_old_file(tmp_path, monkeypatch, after, raised) -> None:
    """The file's write fails with ENOSPC after ``after`` bytes: at the first write torch
    passes it on, later torch raises its own inline_container.cc RuntimeError."""
    import io

    path = tmp_path / "model.pt"
    old = _write_old(path)
    written = {"n": 0}
    real_write = io.BufferedWriter.write

    class Full(io.BufferedWriter):
        def write(self, data) -> int:
            if written["n"] + len(data) > after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written["n"] += len(data)
            return real_write(self, data)

    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode).detach()))
    with pytest.raises(CheckpointError, match=NO_SPACE) as caught:
        atomic_save({"a": torch.zeros(100_000)}, path)
    assert type(caught.value.__cause__) is raised
    _assert_kept(path, old)


def _fail_fsync(monkeypatch, code: int) -> None:
    def fsync(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fsync)


def test_disk_full_at_fsync_keeps_the_old_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "model.pt"
    old = _write_old(path)
    _fail_fsync(monkeypatch, errno.ENOSPC)
    with pytest.raises(CheckpointError, match=NO_SPACE):
        atomic_save({"a": torch.arange(4)}, path)
    _assert_kept(path, old)


def test_disk_full_without_a_previous_file_says_nothing_was_kept(tmp_path, monkeypatch) -> None:
    _fail_fsync(monkeypatch, errno.ENOSPC)
    with pytest.raises(CheckpointError, match="no space left on device.*no previous"):
        atomic_save({"a": torch.arange(4)}, tmp_path / "checkpoint.pt")
    assert list(tmp_path.iterdir()) == []


def test_other_write_errors_pass_through(tmp_path, monkeypatch) -> None:
    _fail_fsync(monkeypatch, errno.EIO)
    with pytest.raises(OSError, match="Input/output error") as caught:
        atomic_save({"a": torch.arange(4)}, tmp_path / "model.pt")
    assert not isinstance(caught.value, CheckpointError)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs at ``tmp_path/disk``; skips where mounting is not permitted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_really_full_disk_keeps_the_old_file(tiny_tmpfs) -> None:
    path = tiny_tmpfs / "model.pt"
    old = _write_old(path)
    with pytest.raises(CheckpointError, match=NO_SPACE):
        atomic_save({"a": torch.zeros(64 * 1024)}, path)  # 256 KiB into 64 KiB
    _assert_kept(path, old)
    assert torch.equal(load_verified(path)["a"], torch.arange(3))
