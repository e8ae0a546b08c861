"""Checkpoint files written so that they appear whole or not at all (training and serving both write them)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import torch

from mp4sr.errors import MP4SRError


class CheckpointError(MP4SRError):
    """A checkpoint cannot be written or read."""


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (a no-op where the file system cannot sync folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync it, rename it over ``path``, fsync the
    folder. On any failure (full disk, read-only folder, interruption) the temporary file is removed
    and the previous ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except (OSError, RuntimeError) as e:  # torch's zip writer reports write failures as RuntimeError
        tmp.unlink(missing_ok=True)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        hint = " (the disk is full: free space, then resume)" if getattr(e, "errno", None) == errno.ENOSPC else ""
        raise CheckpointError(
            f"cannot write checkpoint {path}: {reason}{hint}; the previous checkpoint there, if any, is unchanged"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
