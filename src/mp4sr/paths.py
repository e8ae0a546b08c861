"""Where datasets are found and where caches and outputs go."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "MP4SR_DATA_DIR"
CACHE_ENV = "MP4SR_CACHE_DIR"


def data_roots() -> list[Path]:
    """Folders searched for datasets, in order: $MP4SR_DATA_DIR, ./data, ../shared/data."""
    roots = []
    if os.environ.get(DATA_ENV):
        roots.append(Path(os.environ[DATA_ENV]).expanduser())
    roots.append(Path.cwd() / "data")
    roots.append(Path.cwd().parent / "shared" / "data")
    return roots


def cache_dir() -> Path:
    """The cache folder ($MP4SR_CACHE_DIR, default ~/.cache/mp4sr); created on demand."""
    path = Path(os.environ.get(CACHE_ENV, "~/.cache/mp4sr")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
