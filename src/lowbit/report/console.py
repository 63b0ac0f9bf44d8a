"""What a run says on the console: logging set up for the command line, progress bars only on a
terminal, and the one-line texts of an epoch, a plan and a model's size.

The library only logs (``logging.getLogger("lowbit....")``); the CLI calls
:func:`configure_logging` so that those records reach the user, through ``tqdm.write`` so that
a progress bar on the same terminal is not torn.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

LOGGER = "lowbit"


class _TqdmHandler(logging.Handler):
    """A handler that prints through ``tqdm.write`` (keeps open bars intact) to stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def configure_logging(verbose: bool = True) -> None:
    """Send lowbit's INFO records (WARNING and up with ``verbose=False``) to stderr, once."""
    logger = logging.getLogger(LOGGER)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    if not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.propagate = False


def progress_wanted(requested: bool = True, stream=None) -> bool:
    """Progress bars only when asked for and the stream (stderr) is a terminal: a redirected
    log gets the epoch lines, not carriage-return bar spam."""
    stream = sys.stderr if stream is None else stream
    return bool(requested) and hasattr(stream, "isatty") and stream.isatty()


def duration(seconds: float) -> str:
    """``3.2 s``, ``4 min 05 s``, ``1 h 02 min``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def epoch_line(record: dict[str, Any], epochs: int, history: Sequence[dict[str, Any]]) -> str:
    """The epoch-end line: train/test accuracy (%) and loss, lr, the epoch's time and the ETA
    (mean epoch time of ``history`` times the epochs left)."""
    done = record["epoch"]
    mean = sum(r["epoch_seconds"] for r in history) / max(1, len(history))
    return (f"epoch {done}/{epochs}  train {100 * record['train_accuracy']:.2f} % "
            f"loss {record['train_loss']:.4f}  test {100 * record['test_accuracy']:.2f} % "
            f"loss {record['test_loss']:.4f}  lr {record['lr']:.3g}  "
            f"{duration(record['epoch_seconds'])}  ETA {duration(mean * (epochs - done))}")


def plan_lines(layers: Sequence[Any]) -> list[str]:
    """One line per :class:`~lowbit.convert.LayerPlan`: name, kind, method and bits, why."""
    if not layers:
        return []
    width = max(len(p.name or "(model)") for p in layers)
    lines = []
    for p in layers:
        bits = "float" if p.bits == 32 else f"{p.bits}-bit {p.method}"
        lines.append(f"  {p.name or '(model)':<{width}}  {p.kind:<10}  {bits:<18}  {p.why}")
    return lines


def size_line(sizes: dict[str, int]) -> str:
    """``packed 271,520 B of 1,066,448 B float (0.255 x)``."""
    ratio = sizes["packed_bytes"] / sizes["float_bytes"] if sizes["float_bytes"] else 0.0
    return (f"packed {sizes['packed_bytes']:,} B of {sizes['float_bytes']:,} B float "
            f"({ratio:.3f} x)")
