"""Per-epoch metrics as JSON lines (one object per line, one line per epoch)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lowbit.train.checkpoint import atomic_write_text


def append_jsonl(record: dict[str, Any], path: str | Path) -> None:
    """Append ``record`` as one JSON line to ``path`` and fsync it."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def rewrite_jsonl(records: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Replace ``path`` atomically by ``records``, one JSON line each (empty file if none)."""
    atomic_write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records), path)

