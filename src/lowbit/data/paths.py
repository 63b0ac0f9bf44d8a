"""Where dataset files live: folder names, the download cache and data-directory resolution."""

from __future__ import annotations

import os
from pathlib import Path

from lowbit.errors import DataError

# Datasets that live in files, and the folder each one uses under a data root.
DATASET_FOLDERS: dict[str, str] = {"mnist": "mnist", "cifar10": "cifar-10"}
ENV_VAR = "LOWBIT_DATA"


def default_cache_dir() -> Path:
    """The download root: ``$LOWBIT_DATA`` if set, else ``~/.cache/lowbit/data``."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lowbit" / "data"


def repo_root() -> Path | None:
    """The source checkout holding this package (the first parent with pyproject.toml), if any."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    return None


def dataset_folder(name: str) -> str:
    """The folder name of a file-based dataset; ValueError naming the known ones otherwise."""
    try:
        return DATASET_FOLDERS[name]
    except KeyError:
        known = ", ".join(DATASET_FOLDERS)
        raise ValueError(
            f"unknown file-based dataset {name!r}; known: {known} "
            "(digits ships with scikit-learn and needs no files)"
        ) from None


def resolve_data_dir(name: str, data_dir: str | Path | None = None) -> Path:
    """The directory holding dataset ``name``'s files.

    Precedence: an explicit ``data_dir`` (used as is); else ``$LOWBIT_DATA/<folder>``; else, in a
    source checkout, ``<repo root>/../shared/data/<folder>`` when that folder exists (development
    only); else ``~/.cache/lowbit/data/<folder>``, where ``download`` puts files by default.
    Folders: mnist -> "mnist", cifar10 -> "cifar-10". The directory is not required to exist
    here; ``load_dataset`` raises DataError if it does not.
    """
    folder = dataset_folder(name)
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get(ENV_VAR):
        return default_cache_dir() / folder
    root = repo_root()
    if root is not None:
        dev = root.parent / "shared" / "data" / folder
        if dev.is_dir():
            return dev
    return default_cache_dir() / folder


def require_dir(name: str, path: Path) -> Path:
    """Return ``path`` if it is a directory, else DataError saying how to get the data."""
    if not path.is_dir():
        raise DataError(
            f"data directory for {name!r} not found: {path}; run `lowbit data download {name}` "
            f"or pass --data-dir (data_dir=) to a folder holding the files "
            f"(or set ${ENV_VAR})"
        )
    return path
