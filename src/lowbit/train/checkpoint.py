"""The training checkpoint format: what :func:`lowbit.train.fit` writes after every epoch.

The file is written and read by :mod:`lowbit.train.files`: atomically, with a content digest
that is verified on load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lowbit.errors import CheckpointError
from lowbit.train.files import atomic_write_text, load_verified, save_verified

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "REQUIRED_KEYS", "atomic_save",
           "atomic_write_text", "load_checkpoint", "make_checkpoint"]

CHECKPOINT_FORMAT = "lowbit-train-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("epoch", "model", "optimizer", "scheduler", "torch_rng_state", "history", "config")

atomic_save = save_verified  # the name fit() and experiment.save_model() write with


def make_checkpoint(**state: Any) -> dict[str, Any]:
    """A checkpoint dict: the format tag plus ``state``, which must hold :data:`REQUIRED_KEYS`."""
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`lowbit.train.fit`.

    Raises ``CheckpointError`` naming ``path`` if the file is missing, truncated, corrupt, or
    not a lowbit training checkpoint of a known version, or fails its digest
    (:func:`lowbit.train.files.load_verified`). Loads with ``weights_only=True``.
    """
    path = Path(path)
    state = load_verified(path, what="checkpoint")
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
