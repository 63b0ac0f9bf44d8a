"""download() against a local HTTP server on 127.0.0.1: success, skip, mismatch, 404, truncation."""

from __future__ import annotations

import functools
import hashlib
import http.server
import importlib
import io
import shutil
import tarfile
import threading
from pathlib import Path

import pytest
from idx_helpers import SHARED

from lowbit.data import download
from lowbit.errors import DataError

MNIST = SHARED / "mnist"
# The package exports the function `download`, which shadows the submodule attribute.
dl = importlib.import_module("lowbit.data.download")


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory; records each request; ``truncate`` cuts bodies short."""

    requests: list[str]
    truncate = False

    def do_GET(self):  # noqa: N802 (http.server naming)
        self.requests.append(self.path)
        if not self.truncate:
            return super().do_GET()
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"\x1f\x8b" + bytes(998))  # 1000 of the promised 100000 bytes
        self.close_connection = True
        return None

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """``serve(directory, truncate=False) -> (base_url, requests)``; servers stop at teardown."""
    servers = []

    def start(directory: Path, truncate: bool = False):
        requests: list[str] = []
        handler = type("H", (_Handler,), {"requests": requests, "truncate": truncate})
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(directory))
        )
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/", requests

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or "part" in p.name)


def test_mnist_download_verifies_and_skips(serve, tmp_path):
    if not MNIST.is_dir():
        pytest.skip(f"MNIST not available at {MNIST}")
    base, requests = serve(MNIST)
    target = download("mnist", cache_dir=tmp_path, base_url=base, progress=False)
    assert target == tmp_path / "mnist"
    assert sorted(p.name for p in target.iterdir()) == sorted(dl.MNIST_SHA256)
    for name, sha256 in dl.MNIST_SHA256.items():
        assert _sha256(target / name) == sha256
    assert len(requests) == 4
    # Second call: everything present with the right hash, nothing fetched.
    assert download("mnist", cache_dir=tmp_path, base_url=base, progress=False) == target
    assert len(requests) == 4
    # A corrupted cached file is fetched again and repaired.
    (target / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    download("mnist", cache_dir=tmp_path, base_url=base, progress=False)
    assert requests[4:] == ["/t10k-labels-idx1-ubyte.gz"]
    assert (
        _sha256(target / "t10k-labels-idx1-ubyte.gz")
        == dl.MNIST_SHA256["t10k-labels-idx1-ubyte.gz"]
    )


def test_default_cache_dir_from_env(serve, tmp_path, monkeypatch):
    if not MNIST.is_dir():
        pytest.skip(f"MNIST not available at {MNIST}")
    small = tmp_path / "srv"
    small.mkdir()
    cache = tmp_path / "cache"
    for name in dl.MNIST_SHA256:  # pre-seed the big ones so only the labels are fetched
        if "labels" in name:
            shutil.copy(MNIST / name, small / name)
        else:
            (cache / "mnist").mkdir(parents=True, exist_ok=True)
            shutil.copy(MNIST / name, cache / "mnist" / name)
    monkeypatch.setenv("LOWBIT_DATA", str(cache))
    base, requests = serve(small)
    assert download("mnist", base_url=base, progress=True) == cache / "mnist"
    assert sorted(requests) == ["/t10k-labels-idx1-ubyte.gz", "/train-labels-idx1-ubyte.gz"]


def test_checksum_mismatch_leaves_nothing(serve, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "train-images-idx3-ubyte.gz").write_bytes(b"tampered content")
    base, _ = serve(served)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz") as info:
        download("mnist", cache_dir=cache, base_url=base, progress=False)
    message = str(info.value)
    assert dl.MNIST_SHA256["train-images-idx3-ubyte.gz"] in message
    assert hashlib.sha256(b"tampered content").hexdigest() in message
    assert list((cache / "mnist").iterdir()) == []


def test_http_404_is_data_error(serve, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    base, _ = serve(empty)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz.*404"):
        download("mnist", cache_dir=tmp_path / "cache", base_url=base, progress=False)
    assert list((tmp_path / "cache" / "mnist").iterdir()) == []


def test_truncated_response_is_data_error(serve, tmp_path):
    base, _ = serve(tmp_path, truncate=True)
    with pytest.raises(DataError, match="truncated.*train-images-idx3-ubyte.gz.*1000 of 100000"):
        download("mnist", cache_dir=tmp_path / "cache", base_url=base, progress=False)
    assert list((tmp_path / "cache" / "mnist").iterdir()) == []


def test_unreachable_server_is_data_error(tmp_path):
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        download("mnist", cache_dir=tmp_path, base_url="http://127.0.0.1:9/", progress=False)


def _tiny_cifar_archive(folder: Path) -> dict[str, bytes]:
    """A stand-in cifar-10-binary.tar.gz with one-record batch files; returns their contents."""
    contents = {name: bytes([i]) + bytes(3072) for i, name in enumerate(dl.CIFAR10_SHA256)}
    contents["batches.meta.txt"] = b"airplane\n"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in contents.items():
            info = tarfile.TarInfo(dl.CIFAR10_MEMBER_DIR + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (folder / dl.CIFAR10_ARCHIVE).write_bytes(buffer.getvalue())
    return contents


def test_cifar10_archive_is_verified_and_extracted(serve, tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    contents = _tiny_cifar_archive(served)
    archive_md5 = hashlib.md5((served / dl.CIFAR10_ARCHIVE).read_bytes()).hexdigest()
    sums = {n: hashlib.sha256(contents[n]).hexdigest() for n in dl.CIFAR10_SHA256}
    monkeypatch.setattr(dl, "CIFAR10_SHA256", sums)
    base, requests = serve(served)
    with pytest.raises(DataError, match="cifar-10-binary.tar.gz.*md5"):
        download("cifar10", cache_dir=tmp_path / "c", base_url=base, progress=False)
    assert list((tmp_path / "c" / "cifar-10").iterdir()) == []
    monkeypatch.setattr(dl, "CIFAR10_ARCHIVE_MD5", archive_md5)
    target = download("cifar10", cache_dir=tmp_path / "c", base_url=base, progress=False)
    assert sorted(p.name for p in target.iterdir()) == sorted(contents)
    for name, data in contents.items():
        assert (target / name).read_bytes() == data
    assert len(requests) == 2
    download("cifar10", cache_dir=tmp_path / "c", base_url=base, progress=False)
    assert len(requests) == 2
    # An extracted file failing its SHA-256 is rejected and not left behind.
    (target / "test_batch.bin").unlink()
    monkeypatch.setitem(dl.CIFAR10_SHA256, "test_batch.bin", "0" * 64)
    with pytest.raises(DataError, match="test_batch.bin.*0000"):
        download("cifar10", cache_dir=tmp_path / "c", base_url=base, progress=False)
    assert not (target / "test_batch.bin").exists() and _leftovers(target) == []
