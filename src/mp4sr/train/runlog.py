"""TensorBoard event files of a training run, in ``<out>/tensorboard/`` beside ``epochs.jsonl``.

One point per epoch, the epoch being the step: ``train/loss``, ``train/lr``, ``valid/<metric>``
for each validation metric, ``test/<metric>`` with ``eval.test_every_epoch``, and
``time/train_seconds`` / ``time/eval_seconds``. The values are those of ``epochs.jsonl``.

A resumed run opens a new event file whose first step is the first epoch it trains, with
``purge_step`` at that epoch: TensorBoard then hides what an earlier process wrote for that epoch
and later ones (an epoch logged before a kill that ``last.pt`` did not keep), so every epoch is
shown once. A run started afresh in a used folder purges from epoch 1, as ``epochs.jsonl`` is
rewritten. Needs the ``tensorboard`` package (``pip install 'mp4sr[logs]'``); without it nothing is
written and one line says so. ``tensorboard --logdir runs`` shows every run under ``runs``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("mp4sr.train")

TENSORBOARD_DIR = "tensorboard"
_said_missing = False


def epoch_scalars(row: dict[str, Any]) -> dict[str, float]:
    """TensorBoard tag -> value of one ``epochs.jsonl`` row (``EpochRecord.as_dict()``)."""
    fixed = {"loss": "train/loss", "lr": "train/lr", "train_seconds": "time/train_seconds",
             "eval_seconds": "time/eval_seconds"}
    out = {}
    for key, value in row.items():
        if value is None or key == "epoch":
            continue
        split, _, metric = key.partition("_")
        tag = fixed.get(key) or (f"{split}/{metric}" if split in ("valid", "test") else None)
        if tag:
            out[tag] = float(value)
    return out


def _summary_writer():
    """torch's SummaryWriter class, or None when the tensorboard package is not installed."""
    global _said_missing
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if not _said_missing:
            log.info("tensorboard is not installed: no TensorBoard event files (pip install 'mp4sr[logs]')")
            _said_missing = True
        return None
    return SummaryWriter


class TensorBoardLog:
    """Writes each epoch of a run into ``folder`` (None: writes nothing). The event file is opened
    at the first epoch written, with ``purge_step`` at that epoch (see the module's docstring)."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self._writer = None

    def epoch(self, row: dict[str, Any]) -> None:
        if self.folder is None:
            return
        if self._writer is None:
            writer_class = _summary_writer()
            if writer_class is None:
                self.folder = None
                return
            self._writer = writer_class(str(self.folder), purge_step=int(row["epoch"]))
        for tag, value in epoch_scalars(row).items():
            self._writer.add_scalar(tag, value, global_step=int(row["epoch"]))
        self._writer.flush()  # a run killed later keeps its epochs

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
