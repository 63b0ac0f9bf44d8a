"""How lowbit writes and reads its files: atomically, and torch files with a content digest.

**Atomic.** A file is written next to its destination under a temporary name, flushed and
fsynced, then moved over the destination with ``os.replace`` (atomic on POSIX and Windows), so
a crash leaves either the old file or the new one, never a torn one. A full disk is a
``CheckpointError`` saying so; the temporary file is removed and the previous file stays.

**Verified.** ``torch.load`` does not check the zip CRCs, so a flipped bit in a weight loads
silently. :func:`save_verified` stores ``sha256``, the digest of the dict's content, in the
dict itself (the file stays a plain ``torch.load(weights_only=True)`` dict);
:func:`load_verified` checks the zip CRCs of every record, then the digest. The digest is
SHA-256 over a walk of the content in its stored order (see :func:`content_digest`); the zip
CRCs also cover the pickle's bytes, so a damaged ``sha256`` key name is caught too. A file
without the key (written before lowbit stored it) loads with a warning.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import struct
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from lowbit.errors import CheckpointError

log = logging.getLogger(__name__)

DIGEST_KEY = "sha256"
_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


def _fsync_dir(directory: Path) -> None:
    """Persist a rename in ``directory`` (best effort: not every platform can open a dir)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _disk_full(exc: BaseException) -> str | None:
    """"no space left on device" if ``exc`` or an error it arose from is a full disk (torch's
    zip writer turns the file's ENOSPC into a RuntimeError from inline_container.cc)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in _FULL:
            return _FULL[exc.errno]
        exc = exc.__cause__ or exc.__context__
    return None


def _atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write via a temporary file; the result gets the mode a plain ``open`` would give it
    (0666 minus the umask), not mkstemp's private 0600."""
    path = Path(path)
    tmp_name = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp_name, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
        reason = _disk_full(exc)
        if reason is None:
            raise
        kept = (f"the previous {path.name} is kept" if path.exists()
                else f"there was no previous {path.name}")
        raise CheckpointError(f"{reason} while writing {path}; {kept}") from exc
    _fsync_dir(path.parent)


def atomic_write_text(text: str, path: str | Path) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    _atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def _feed(digest: Any, obj: Any, where: str) -> None:
    """Feed ``obj`` to ``digest``: a type tag, then the value (containers recursively)."""
    if isinstance(obj, torch.Tensor):
        if obj.layout != torch.strided or obj.is_quantized:
            raise TypeError(f"cannot checksum a {obj.layout} tensor at {where or 'top'}")
        head = (type(obj).__name__, obj.dtype, tuple(obj.shape), obj.stride(), obj.requires_grad)
        digest.update(f"T{head};".encode())
        flat = obj.detach().cpu().resolve_conj().resolve_neg().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        digest.update(f"D{type(obj).__qualname__}{len(obj)};".encode())
        for key, value in obj.items():
            _feed(digest, key, where)
            _feed(digest, value, f"{where}[{key!r}]")
        if hasattr(obj, "_metadata"):  # state dicts carry per-module versions here
            _feed(digest, obj._metadata, f"{where}._metadata")
    elif isinstance(obj, (list, tuple)):
        digest.update(f"L{type(obj).__qualname__}{len(obj)};".encode())
        for index, item in enumerate(obj):
            _feed(digest, item, f"{where}[{index}]")
    elif isinstance(obj, (str, bytes)):
        data = obj.encode("utf-8") if isinstance(obj, str) else obj
        digest.update(f"{type(obj).__name__[0]}{len(data)};".encode() + data)
    elif isinstance(obj, float):
        digest.update(b"F" + struct.pack("<d", obj))
    elif obj is None or isinstance(obj, (bool, int, torch.dtype, torch.device)):
        digest.update(f"{type(obj).__name__}:{obj};".encode())
    else:
        raise TypeError(f"cannot checksum a {type(obj).__name__} at {where or 'top'}")


def content_digest(obj: Any) -> str:
    """SHA-256 (hex) of ``obj``'s content: dicts (keys in order, a state dict's ``_metadata``),
    lists, tuples, tensors (type, dtype, shape, strides, requires_grad, the raw bytes in
    row-major order), str, bytes, float (IEEE double), int, bool, None, dtype, device; each
    tagged with its type. Raises ``TypeError`` on any other type."""
    digest = hashlib.sha256()
    _feed(digest, obj, "")
    return digest.hexdigest()


def save_verified(obj: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` ``obj`` plus its :func:`content_digest` under ``"sha256"``, atomically:
    readers see the old file or the complete new one."""
    if not isinstance(obj, dict):
        raise TypeError(f"save_verified stores a dict, not a {type(obj).__name__}")
    if DIGEST_KEY in obj:
        raise ValueError(f"the key {DIGEST_KEY!r} is reserved for the content digest")
    stamped = {**obj, DIGEST_KEY: content_digest(obj)}
    _atomic_write(path, lambda handle: torch.save(stamped, handle))


def _check_zip(path: Path, what: str) -> None:
    """Read every record of a torch zip file and check its CRC (torch.load checks none)."""
    try:
        if not zipfile.is_zipfile(path):
            return  # not a zip (a legacy torch file, or damaged): torch.load decides
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as exc:  # zipfile raises BadZipFile, EOFError, ValueError, ...
        raise CheckpointError(f"{what} {path} is damaged: {type(exc).__name__}: {exc}") from exc
    if bad is not None:
        raise CheckpointError(f"{what} {path} is damaged: record {bad} fails its CRC check")


def load_verified(path: str | Path, what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU, verified: the zip CRCs, then the
    content digest that :func:`save_verified` stored (removed from the returned dict).

    Raises ``CheckpointError`` naming ``what`` and ``path`` if the file is missing, truncated,
    damaged or does not match its digest. A dict without a digest is returned with a warning.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist")
    _check_zip(path, what)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for damaged files
        raise CheckpointError(f"cannot read {what} {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, dict) or DIGEST_KEY not in obj:
        log.warning("%s %s has no content digest (written by an older lowbit); it cannot be "
                    "verified", what, path)
        return obj
    stored = obj.pop(DIGEST_KEY)
    try:
        actual = content_digest(obj)
    except TypeError as exc:
        raise CheckpointError(f"{what} {path} is damaged: {exc}") from exc
    if stored != actual:
        raise CheckpointError(f"{what} {path} is damaged: its content does not match the sha256 "
                              "stored in it")
    return obj
