"""The training loop: Adam, gradient clipping, validation every epoch, early stopping, best checkpoint."""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from mp4sr.config import EvalSettings, TrainSettings
from mp4sr.data.batching import train_batches
from mp4sr.data.split import LeaveOneOut, TrainExamples
from mp4sr.errors import MP4SRError
from mp4sr.evaluate.ranking import RankingResult, full_ranking

log = logging.getLogger("mp4sr.train")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise MP4SRError(f"cannot write checkpoint {path}: {e.strerror or e}") from None


@dataclass
class EpochRecord:
    epoch: int
    loss: float | None
    train_seconds: float
    eval_seconds: float
    valid: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "loss": self.loss, "train_seconds": self.train_seconds,
                "eval_seconds": self.eval_seconds, **{f"valid_{k}": v for k, v in self.valid.items()}}


@dataclass
class TrainResult:
    best_epoch: int
    valid: dict[str, float]
    test: dict[str, float]
    test_ranks: np.ndarray
    history: list[EpochRecord] = field(default_factory=list)


class Trainer:
    """Trains ``model`` on a leave-one-out split and reports the test metrics of the best valid epoch.

    ``checkpoint_extra`` is stored beside the weights in every checkpoint (config, item index...).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        split: LeaveOneOut,
        examples: TrainExamples,
        settings: TrainSettings,
        eval_settings: EvalSettings,
        max_len: int,
        out_dir: Path | None = None,
        checkpoint_extra: dict[str, Any] | None = None,
        on_epoch: Callable[[EpochRecord], None] | None = None,
    ):
        self.model = model.to(settings.device)
        self.split = split
        self.examples = examples
        self.settings = settings
        self.eval_settings = eval_settings
        self.max_len = max_len
        self.out_dir = Path(out_dir) if out_dir else None
        self.checkpoint_extra = checkpoint_extra or {}
        self.on_epoch = on_epoch
        self.values = torch.from_numpy(split.dataset.sequences.items)

    def evaluate(self, which: str = "valid") -> RankingResult:
        evalset = self.split.valid if which == "valid" else self.split.test
        return full_ranking(
            self.model, self.values, evalset, self.max_len, self.eval_settings.ks,
            self.settings.eval_batch_size, self.eval_settings.exclude_history, self.settings.device,
        )

    def train_epoch(self, optimizer: torch.optim.Optimizer, rng: np.random.Generator, epoch: int) -> float:
        s = self.settings
        self.model.train()
        total, steps = 0.0, 0
        batches = train_batches(self.values, self.examples, s.batch_size, rng, s.group_by_length)
        n_batches = -(-len(self.examples) // s.batch_size)
        bar = tqdm(batches, total=n_batches, desc=f"epoch {epoch}", leave=False, disable=not s.progress or None)
        for batch in bar:
            loss = self.model.calculate_loss(batch.to(s.device))
            if not torch.isfinite(loss):
                raise MP4SRError(f"the training loss became {loss.item()} at epoch {epoch}; lower train.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if s.clip_grad:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.clip_grad)
            optimizer.step()
            total += loss.item()
            steps += 1
            bar.set_postfix(loss=f"{loss.item():.4f}")
        return total / max(steps, 1)

    def fit(self) -> TrainResult:
        s = self.settings
        if s.threads:
            torch.set_num_threads(s.threads)
        seed_everything(s.seed)
        rng = np.random.default_rng(s.seed)
        if self.out_dir:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "epochs.jsonl").write_text("")
        history: list[EpochRecord] = []
        trainable = getattr(self.model, "trainable", True) and s.epochs > 0
        best_metric, best_epoch, best_state, waited = -np.inf, 0, None, 0
        if trainable:
            optimizer = torch.optim.Adam(
                [p for p in self.model.parameters() if p.requires_grad], lr=s.lr, weight_decay=s.weight_decay
            )
            for epoch in range(1, s.epochs + 1):
                t0 = time.perf_counter()
                loss = self.train_epoch(optimizer, rng, epoch)
                t1 = time.perf_counter()
                valid = self.evaluate("valid").metrics
                record = EpochRecord(epoch, loss, t1 - t0, time.perf_counter() - t1, valid)
                history.append(record)
                self._log_epoch(record)
                if valid[s.valid_metric] > best_metric:
                    best_metric, best_epoch, waited = valid[s.valid_metric], epoch, 0
                    best_state = copy.deepcopy(self.model.state_dict())
                    self._save("best.pt", epoch, valid)
                else:
                    waited += 1
                    if waited >= s.patience:
                        log.info("no improvement of %s for %d epochs: stopping", s.valid_metric, waited)
                        break
            if best_state is not None:
                self.model.load_state_dict(best_state)
        valid_result = self.evaluate("valid")
        test_result = self.evaluate("test")
        if not trainable:
            self._save("best.pt", 0, valid_result.metrics)
        return TrainResult(best_epoch, valid_result.metrics, test_result.metrics, test_result.ranks, history)

    def _log_epoch(self, record: EpochRecord) -> None:
        m = self.settings.valid_metric
        log.info("epoch %d  loss %.4f  valid %s %.4f  (train %.1fs, eval %.2fs)",
                 record.epoch, record.loss or 0.0, m, record.valid[m], record.train_seconds, record.eval_seconds)
        if self.out_dir:
            with open(self.out_dir / "epochs.jsonl", "a") as f:
                f.write(json.dumps(record.as_dict()) + "\n")
        if self.on_epoch:
            self.on_epoch(record)

    def _save(self, name: str, epoch: int, valid: dict[str, float]) -> None:
        if not self.out_dir:
            return
        atomic_save(
            {"state_dict": self.model.state_dict(), "epoch": epoch, "valid": valid, **self.checkpoint_extra},
            self.out_dir / name,
        )
