"""Download MNIST or CIFAR-10 (binary version) into a local cache, verifying every file.

Each file is streamed into a temporary file in its destination folder, its hash is checked, and
only then is it moved into place with ``os.replace`` (atomic). A failed, truncated or tampered
download leaves nothing behind and raises DataError naming the file (and both hashes on a
mismatch). Files already present with the right SHA-256 are not fetched again.

Checksums are those of /work/shared/data/README.md: the SHA-256 of each MNIST ``.gz`` file and
of each CIFAR-10 batch file, and the MD5 of the CIFAR-10 archive (the only published value).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from lowbit.data.paths import dataset_folder, default_cache_dir
from lowbit.errors import DataError

MNIST_BASE_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",  # noqa: E501
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",  # noqa: E501
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",  # noqa: E501
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",  # noqa: E501
}  # fmt: skip

CIFAR10_BASE_URL = "https://www.cs.toronto.edu/~kriz/"
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_ARCHIVE_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR10_MEMBER_DIR = "cifar-10-batches-bin/"
CIFAR10_SHA256: dict[str, str] = {
    "data_batch_1.bin": "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5",
    "data_batch_2.bin": "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed",
    "data_batch_3.bin": "bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67",
    "data_batch_4.bin": "014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48",
    "data_batch_5.bin": "755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add",
    "test_batch.bin": "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b",
}  # fmt: skip
CIFAR10_EXTRA = ("batches.meta.txt",)  # no published checksum; covered by the archive's MD5

TIMEOUT_SECONDS = 60.0
_CHUNK = 1 << 20


def download(
    name: str,
    cache_dir: Path | None = None,
    base_url: str | None = None,
    progress: bool = True,
) -> Path:
    """Fetch dataset ``name`` ("mnist" or "cifar10") and return the folder holding its files.

    Files go to ``<cache_dir>/<folder>/`` (folder "mnist" or "cifar-10"); ``cache_dir`` defaults
    to ``$LOWBIT_DATA`` or ``~/.cache/lowbit/data``. ``base_url`` replaces the canonical base URL
    (the file name is appended to it), e.g. to point at a mirror or a test server.
    """
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = folder / dataset_folder(name)
    target.mkdir(parents=True, exist_ok=True)
    if name == "mnist":
        base = base_url or MNIST_BASE_URL
        for filename, sha256 in MNIST_SHA256.items():
            dest = target / filename
            if not _has_hash(dest, sha256):
                _fetch(_join(base, filename), dest, "sha256", sha256, progress)
    else:
        missing = [f for f, h in CIFAR10_SHA256.items() if not _has_hash(target / f, h)]
        if missing:
            _fetch_cifar10(target, base_url or CIFAR10_BASE_URL, missing, progress)
    return target


def _fetch_cifar10(target: Path, base: str, missing: list[str], progress: bool) -> None:
    """Download the archive, check its MD5, extract the ``missing`` batch files (and the meta)."""
    archive = target / CIFAR10_ARCHIVE
    _fetch(_join(base, CIFAR10_ARCHIVE), archive, "md5", CIFAR10_ARCHIVE_MD5, progress)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for filename in missing:
                _extract(tar, filename, target / filename, CIFAR10_SHA256[filename], archive)
            for filename in CIFAR10_EXTRA:
                if not (target / filename).exists():
                    _extract(tar, filename, target / filename, None, archive)
    except (tarfile.TarError, EOFError) as exc:
        raise DataError(f"corrupt archive {archive}: {exc}") from exc
    finally:
        archive.unlink(missing_ok=True)


def _extract(
    tar: tarfile.TarFile, filename: str, dest: Path, sha256: str | None, archive: Path
) -> None:
    """Copy one archive member to ``dest`` through a verified temp file (no path from the tar)."""
    try:
        member = tar.extractfile(CIFAR10_MEMBER_DIR + filename)
    except KeyError:
        member = None
    if member is None:
        raise DataError(f"{archive} has no regular file {CIFAR10_MEMBER_DIR + filename}")
    with member:
        _write_verified(_chunks(member), dest, "sha256", sha256, None, progress=False)


def _fetch(url: str, dest: Path, algorithm: str, expected: str, progress: bool) -> None:
    """Download ``url`` to ``dest`` atomically, checking length and hash; DataError on failure."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            _write_verified(_chunks(response), dest, algorithm, expected, total, progress, url)
    except DataError:
        raise
    except urllib.error.HTTPError as exc:
        raise DataError(
            f"download of {dest.name} failed: HTTP {exc.code} {exc.reason} ({url})"
        ) from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise DataError(f"download of {dest.name} failed ({url}): {exc}") from exc


def _write_verified(
    chunks: Iterable[bytes],
    dest: Path,
    algorithm: str,
    expected: str | None,
    total: int | None,
    progress: bool,
    source: str = "",
) -> None:
    """Stream ``chunks`` into a temp file beside ``dest``; on success move it to ``dest``."""
    digest = hashlib.new(algorithm)
    handle, temp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    temp = Path(temp_name)
    try:
        size = 0
        with os.fdopen(handle, "wb") as out, _bar(dest.name, total, progress) as bar:
            for chunk in chunks:
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                bar.update(len(chunk))
        if total is not None and size != total:
            raise DataError(f"truncated download of {dest.name}: {size} of {total} bytes {source}")
        actual = digest.hexdigest()
        if expected is not None and actual != expected:
            raise DataError(
                f"checksum mismatch for {dest.name}: expected {algorithm} {expected}, "
                f"got {actual} {source}".rstrip()
            )
        os.replace(temp, dest)
    finally:
        temp.unlink(missing_ok=True)


def _chunks(stream: BinaryIO) -> Iterable[bytes]:
    while chunk := stream.read(_CHUNK):
        yield chunk


def _bar(label: str, total: int | None, progress: bool) -> tqdm:
    return tqdm(
        total=total, desc=label, unit="B", unit_scale=True, disable=not progress, file=sys.stderr
    )


def _has_hash(path: Path, sha256: str) -> bool:
    """True if ``path`` is a file whose SHA-256 is ``sha256``."""
    if not path.is_file():
        return False
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in _chunks(f):
            digest.update(chunk)
    return digest.hexdigest() == sha256


def _join(base: str, filename: str) -> str:
    return base if base.endswith(filename) else base.rstrip("/") + "/" + filename
