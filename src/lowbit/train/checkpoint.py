"""Atomic file writes and the training checkpoint format.

A file is written next to its destination under a temporary name, flushed and fsynced, then
moved over the destination with ``os.replace`` (atomic on POSIX and Windows), so a crash leaves
either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from lowbit.errors import CheckpointError

CHECKPOINT_FORMAT = "lowbit-train-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("epoch", "model", "optimizer", "scheduler", "torch_rng_state", "history", "config")


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


def _atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write via a temporary file; the result gets the mode a plain ``open`` would give it
    (0666 minus the umask), not mkstemp's private 0600."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp_name, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)``, atomically: readers see the old file or the complete new one."""
    _atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_text(text: str, path: str | Path) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    _atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def make_checkpoint(**state: Any) -> dict[str, Any]:
    """A checkpoint dict: the format tag plus ``state``, which must hold :data:`REQUIRED_KEYS`."""
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`lowbit.train.fit`.

    Raises ``CheckpointError`` naming ``path`` if the file is missing, truncated, corrupt, or
    not a lowbit training checkpoint of a known version. Loads with ``weights_only=True``.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for damaged files
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a lowbit training checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {state.get('version')!r}; "
            f"this lowbit reads version {CHECKPOINT_VERSION}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}")
    return state
