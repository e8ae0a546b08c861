"""The training loop: Adam or AdamW (``mp4sr.train.optim``), gradient clipping, validation every
epoch, a lower learning rate on a plateau (``train.lr_decay``), early stopping, checkpoints (``best.pt``,
``last.pt``), exact resumption, and a clean stop on SIGINT / SIGTERM."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from mp4sr.config import EvalSettings, TrainSettings
from mp4sr.data.batching import make_train_batch, train_batches
from mp4sr.data.split import LeaveOneOut, TrainExamples
from mp4sr.devices import autocast, check_device
from mp4sr.errors import ConfigError, MP4SRError
from mp4sr.evaluate.metrics import mean_metrics
from mp4sr.evaluate.ranking import RankingResult, full_ranking
from mp4sr.models.base import SequentialRecommender
from mp4sr.train import distributed
from mp4sr.train.allocator import keep_freed_memory
from mp4sr.train.optim import make_optimizer
from mp4sr.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    CheckpointMismatch,
    atomic_save,
    capture_rng,
    check_compatible,
    check_config,
    load_checkpoint,
    restore_rng,
)
from mp4sr.train.runlog import TENSORBOARD_DIR, TensorBoardLog

log = logging.getLogger("mp4sr.train")

__all__ = ["EpochPosition", "EpochRecord", "TrainResult", "TrainState", "Trainer", "TrainingInterrupted",
           "atomic_save", "seed_everything"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class TrainingInterrupted(MP4SRError):
    """Training stopped on SIGINT / SIGTERM after saving ``last.pt``; ``exit_code`` is 128 + the signal."""

    def __init__(self, message: str, signum: int, folder: Path | None):
        super().__init__(message)
        self.signum = signum
        self.folder = folder
        self.exit_code = 128 + int(signum)


PROTOCOLS = {False: "history_kept", True: "history_excluded"}  # eval.exclude_history -> its name in metrics.json


@dataclass
class EpochRecord:
    epoch: int
    loss: float | None
    train_seconds: float
    eval_seconds: float
    valid: dict[str, float]
    test: dict[str, float] | None = None  # only with eval.test_every_epoch
    lr: float | None = None  # of the first parameter group, at the end of the epoch

    def as_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "loss": self.loss, "lr": self.lr, "train_seconds": self.train_seconds,
                "eval_seconds": self.eval_seconds, **{f"valid_{k}": v for k, v in self.valid.items()},
                **{f"test_{k}": v for k, v in (self.test or {}).items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EpochRecord":
        valid = {k[len("valid_"):]: v for k, v in d.items() if k.startswith("valid_")}
        test = {k[len("test_"):]: v for k, v in d.items() if k.startswith("test_")}
        return cls(d["epoch"], d["loss"], d["train_seconds"], d["eval_seconds"], valid, test or None, d.get("lr"))


@dataclass
class TrainResult:
    best_epoch: int
    valid: dict[str, float]
    test: dict[str, float]
    test_ranks: np.ndarray
    history: list[EpochRecord] = field(default_factory=list)
    # with eval.test_both_protocols: 'history_kept' / 'history_excluded' -> the test ranking that way
    test_by_protocol: dict[str, RankingResult] = field(default_factory=dict)


@dataclass
class TrainState:
    """The counters of a run that ``last.pt`` carries over to its resumption."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    best_metric: float = -np.inf
    best_epoch: int = 0
    waited: int = 0  # epochs without improvement (early stopping)
    history: list[EpochRecord] = field(default_factory=list)


@dataclass
class EpochPosition:
    """Where training stands inside an epoch: the epoch's batches (rows of the training examples, in
    the order they are trained), how many are done, and the loss summed so far."""

    epoch: int
    batches: list[np.ndarray] | None = None  # None until needed: then replayed from start_rng
    start_rng: dict[str, Any] | None = None  # the shuffler's state before it drew this epoch's order
    done: int = 0
    loss_total: float = 0.0
    seconds: float = 0.0

    def as_checkpoint(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch, "done": self.done, "loss_total": self.loss_total, "seconds": self.seconds,
            "order": torch.from_numpy(np.concatenate(self.batches).astype(np.int64)),
            "sizes": torch.tensor([len(b) for b in self.batches], dtype=torch.int64),
        }

    @classmethod
    def from_checkpoint(cls, d: dict[str, Any]) -> "EpochPosition":
        cuts = np.cumsum(d["sizes"].numpy())[:-1]
        batches = np.split(d["order"].numpy(), cuts)
        return cls(d["epoch"], batches, None, d["done"], d["loss_total"], d["seconds"])


class Trainer:
    """Trains ``model`` on a leave-one-out split and reports the test metrics of the best valid epoch.

    With ``out_dir`` it writes ``best.pt`` (best weights), ``last.pt`` (the whole training state, at
    the start, after every epoch and on SIGINT / SIGTERM), ``epochs.jsonl`` and the same records as
    TensorBoard event files in ``tensorboard/`` (``mp4sr.train.runlog``). ``resume=True``
    continues from ``out_dir/last.pt`` (from scratch if there is none); a path continues from that
    file. ``checkpoint_extra`` (config, item index...) and ``feature_manifest`` (per modality, from
    the FeatureStore manifests) are stored in every checkpoint and checked on resumption.

    Under torchrun the processes share each batch and the evaluation (see ``mp4sr.train.distributed``);
    only rank 0 writes. ``settings.device`` is where it trains and evaluates (batches from pinned
    memory on a GPU); ``settings.precision="bf16"`` runs the forward pass and the loss under bfloat16
    autocast, while evaluation scores in float32 (bfloat16 scores tie far more often).
    """

    def __init__(
        self,
        model: SequentialRecommender,
        split: LeaveOneOut,
        examples: TrainExamples,
        settings: TrainSettings,
        eval_settings: EvalSettings,
        max_len: int,
        out_dir: Path | None = None,
        checkpoint_extra: dict[str, Any] | None = None,
        on_epoch: Callable[[EpochRecord], None] | None = None,
        feature_manifest: dict[str, dict[str, Any]] | None = None,
        resume: bool | str | Path = False,
    ):
        self.device = distributed.device_for(settings.device)
        check_device(self.device, settings.precision)
        self.model = model.to(self.device)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.is_main = self.rank == 0
        self.ddp = distributed.wrap(self.model, self.device) if self.world > 1 else None
        self.split = split
        self.examples = examples
        self.settings = settings
        self.eval_settings = eval_settings
        self.max_len = max_len
        self.out_dir = Path(out_dir) if out_dir else None
        self.checkpoint_extra = checkpoint_extra or {}
        self.on_epoch = on_epoch
        self.feature_manifest = feature_manifest
        self.resume = resume
        if resume and self.out_dir is None:
            raise ConfigError("resuming needs the run's output folder (out_dir)")
        self.values = torch.from_numpy(split.dataset.sequences.items)
        self.scheduler: Any = None  # an LR scheduler set by a subclass is saved and restored too
        self.state = TrainState()
        self._signal: int | None = None
        self._epoch_seconds = 0.0
        logs = self.out_dir and self.is_main and settings.tensorboard
        self.tensorboard = TensorBoardLog(self.out_dir / TENSORBOARD_DIR if logs else None)

    def evaluate(self, which: str = "valid", exclude_history: bool | None = None) -> RankingResult:
        """Full ranking of ``which`` set; ``exclude_history`` (default: eval.exclude_history) drops seen items."""
        evalset = self.split.valid if which == "valid" else self.split.test
        shard = (self.rank, self.world) if self.world > 1 else None
        exclude = self.eval_settings.exclude_history if exclude_history is None else exclude_history
        result = full_ranking(
            self.model, self.values, evalset, self.max_len, self.eval_settings.ks,
            self.settings.eval_batch_size, exclude, self.device, shard,
        )
        if shard is None:
            return result
        ranks = distributed.all_reduce_sum(torch.from_numpy(result.ranks)).numpy()  # shards are disjoint
        return RankingResult(ranks, mean_metrics(torch.from_numpy(ranks), self.eval_settings.ks))

    def _shard(self, rows: np.ndarray) -> tuple[np.ndarray, float]:
        """This process's rows of a global batch and the weight of its loss: world size x its share
        of the batch's targets, so that the averaged gradients are those of the whole batch."""
        if self.world == 1:
            return rows, 1.0
        mine = rows[self.rank :: self.world]
        if self.examples.last_only:
            return mine, self.world * len(mine) / len(rows)
        count = lambda r: float((self.examples.end[r] - self.examples.start[r]).sum())  # noqa: E731
        return mine, self.world * count(mine) / count(rows)

    def _step_loss(self, batch) -> torch.Tensor:
        with autocast(self.device, self.settings.precision):  # the backward pass runs outside it, as torch asks
            return self.ddp(batch) if self.ddp is not None else self.model.calculate_loss(batch)

    # ------------------------------------------------------------------ one epoch

    def train_epoch(self, optimizer: torch.optim.Optimizer, rng: np.random.Generator, epoch: int,
                    position: EpochPosition | None = None) -> float:
        """One pass over the shuffled examples (or the rest of the pass ``position`` describes);
        returns the mean loss. On SIGINT / SIGTERM it saves ``last.pt`` after the current step and
        raises ``TrainingInterrupted``."""
        s = self.settings
        self.model.train()
        if position is None:
            position = EpochPosition(epoch, start_rng=copy.deepcopy(rng.bit_generator.state))
            batch_rows = train_batches(self.values, self.examples, s.batch_size, rng, s.group_by_length, rows_only=True)
        else:
            batch_rows = iter(position.batches[position.done:])
        n_batches = -(-len(self.examples) // s.batch_size)
        t0, seconds_before = time.perf_counter(), position.seconds
        bar = tqdm(batch_rows, total=n_batches, initial=position.done, desc=f"epoch {epoch}", leave=False,
                   disable=not s.progress or not self.is_main or None)
        for rows in bar:
            if len(rows) < self.world:  # too small to give every process a row: skipped by all
                position.done += 1
                continue
            rows, weight = self._shard(rows)
            batch = make_train_batch(self.values, self.examples, rows)
            loss = self._step_loss(batch.to(self.device))
            if not torch.isfinite(loss):
                raise MP4SRError(f"the training loss became {loss.item()} at epoch {epoch}; lower train.lr")
            optimizer.zero_grad(set_to_none=True)
            (loss * weight).backward()
            if s.clip_grad:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.clip_grad)
            optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            value = loss.item()
            if self.world > 1:  # the batch's loss, and whether any process was asked to stop
                both = distributed.all_reduce_sum(torch.tensor([value * weight, float(self._signal is not None)]))
                value = both[0].item() / self.world
                if both[1] > 0 and self._signal is None:
                    self._signal = signal.SIGTERM
            position.loss_total += value
            position.done += 1
            self.state.step += 1
            bar.set_postfix(loss=f"{value:.4f}")
            if self._signal is not None and position.done < n_batches:
                position.seconds = seconds_before + time.perf_counter() - t0
                self._stop_mid_epoch(optimizer, rng, position, n_batches)
        position.seconds = seconds_before + time.perf_counter() - t0
        self._epoch_seconds = position.seconds
        return position.loss_total / max(position.done, 1)

    def _stop_mid_epoch(self, optimizer, rng, position: EpochPosition, n_batches: int) -> None:
        if position.batches is None:  # replay the shuffle from the epoch's start to record its order
            replay = np.random.Generator(type(rng.bit_generator)())
            replay.bit_generator.state = position.start_rng
            s = self.settings
            position.batches = list(train_batches(
                self.values, self.examples, s.batch_size, replay, s.group_by_length, rows_only=True))
        self._save_last(optimizer, rng, position)
        raise self._interrupted(f"during epoch {position.epoch} ({position.done} of {n_batches} batches done)")

    # ------------------------------------------------------------------ the run

    def fit(self) -> TrainResult:
        s = self.settings
        if s.threads:
            torch.set_num_threads(s.threads)
        keep_freed_memory()
        seed_everything(s.seed)
        rng = np.random.default_rng(s.seed)
        self.state = TrainState()
        trainable = self.model.trainable and s.epochs > 0
        if trainable:
            try:
                best_state = self._train(rng)
            finally:
                self.tensorboard.close()
            if best_state is not None:
                self.model.load_state_dict(best_state)
        else:
            self._write_history()
        valid_result = self.evaluate("valid")
        test_result = self.evaluate("test")
        if not trainable:
            self._save_best(0, valid_result.metrics)
        by_protocol = {}
        if self.eval_settings.test_both_protocols:
            other = not self.eval_settings.exclude_history
            by_protocol = {PROTOCOLS[self.eval_settings.exclude_history]: test_result,
                           PROTOCOLS[other]: self.evaluate("test", exclude_history=other)}
        st = self.state
        return TrainResult(st.best_epoch, valid_result.metrics, test_result.metrics, test_result.ranks, st.history,
                           by_protocol)

    def _train(self, rng: np.random.Generator) -> dict[str, torch.Tensor] | None:
        """The epochs (from the start, or from where ``last.pt`` stopped); returns the best weights."""
        s = self.settings
        optimizer = make_optimizer(self.model, s)
        resumed = self._resume(optimizer, rng) if self.resume else None
        position, best_state = resumed or (None, None)
        if resumed is None:
            self._write_history()
            self._save_last(optimizer, rng)  # from here on, a run killed at any moment can be resumed
        if self.out_dir and self.is_main:  # temporary files of a run killed while it saved
            for stale in self.out_dir.glob(".*.pt.tmp-*"):
                stale.unlink(missing_ok=True)
        st = self.state
        with self._catch_signals():
            for epoch in range(st.epoch + 1, s.epochs + 1):
                if st.waited >= s.patience:
                    break
                loss = self.train_epoch(optimizer, rng, epoch, position)
                position = None
                t1 = time.perf_counter()
                valid = self.evaluate("valid").metrics
                test = self.evaluate("test").metrics if self.eval_settings.test_every_epoch else None
                record = EpochRecord(epoch, loss, self._epoch_seconds, time.perf_counter() - t1, valid, test,
                                     optimizer.param_groups[0]["lr"])
                st.history.append(record)
                st.epoch = epoch
                self._log_epoch(record)
                improved = valid[s.valid_metric] > st.best_metric
                if improved:
                    st.best_metric, st.best_epoch, st.waited = valid[s.valid_metric], epoch, 0
                    best_state = copy.deepcopy(self.model.state_dict())
                else:
                    st.waited += 1
                    if s.lr_decay and st.waited % s.lr_patience == 0 and st.waited < s.patience:
                        rate = max(group["lr"] for group in optimizer.param_groups) * s.lr_decay
                        if s.lr_min is not None and rate < s.lr_min:
                            log.info("no improvement of %s for %d epochs and the next learning rate (%.3g) would "
                                     "be below lr_min", s.valid_metric, st.waited, rate)
                            st.waited = s.patience  # the run ends as early stopping ends it, also after a resume
                        else:
                            self._decay(optimizer, best_state)
                # last.pt first: if the run dies before best.pt is written, last.pt holds the best weights
                self._save_last(optimizer, rng)
                if improved:
                    self._save_best(epoch, valid)
                if self.world > 1 and distributed.all_reduce_sum(torch.tensor([float(self._signal is not None)]))[0] > 0:
                    self._signal = self._signal or signal.SIGTERM  # another process was asked to stop
                if self._signal is not None:
                    raise self._interrupted(f"after epoch {epoch}")
                if st.waited >= s.patience:
                    log.info("no improvement of %s since epoch %d: stopping", s.valid_metric, st.best_epoch)
        return best_state

    def _decay(self, optimizer: torch.optim.Optimizer, best_state: dict[str, torch.Tensor] | None) -> None:
        """A plateau: back to the best epoch's weights, every group's learning rate times ``lr_decay``. Its
        state is the weights and the optimiser's rates, both in ``last.pt``, so a resumed run decays alike."""
        if best_state is not None:
            self.model.load_state_dict(best_state)
        for group in optimizer.param_groups:
            group["lr"] *= self.settings.lr_decay
        log.info("no improvement of %s for %d epochs: back to epoch %d at learning rate %.3g",
                 self.settings.valid_metric, self.state.waited, self.state.best_epoch, optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------ resumption

    def _resume_path(self) -> Path | None:
        if self.resume is True:
            path = self.out_dir / "last.pt"
            if not path.is_file():
                log.warning("nothing to resume in %s (no last.pt): training from the start", self.out_dir)
                return None
            return path
        path = Path(self.resume)
        path = path / "last.pt" if path.is_dir() else path
        if not path.is_file():
            raise CheckpointError(f"cannot resume: {path} not found")
        return path

    def _resume(self, optimizer, rng) -> tuple[EpochPosition | None, dict[str, torch.Tensor] | None] | None:
        """Load ``last.pt`` into the model, optimiser, RNGs and counters; returns (position in the
        epoch or None, best weights so far or None), or None when there is nothing to resume."""
        path = self._resume_path()
        if path is None:
            return None
        ckpt = load_checkpoint(path)
        if ckpt.get("kind") != "last" or "optimizer" not in ckpt:
            raise CheckpointError(f"{path} holds weights only, not a training state: resume from a run folder's last.pt")
        if ckpt.get("format", 0) > CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path} was written by a newer mp4sr (format {ckpt['format']}): upgrade mp4sr")
        extra = self.checkpoint_extra
        check_compatible(ckpt, path, extra.get("item_ids"), self.feature_manifest, extra.get("model_name"))
        if "config" in extra:
            check_config(ckpt, extra["config"], path)
        try:
            self.model.load_state_dict(ckpt["state_dict"])
            optimizer.load_state_dict(ckpt["optimizer"])
            if self.scheduler is not None and ckpt.get("scheduler") is not None:
                self.scheduler.load_state_dict(ckpt["scheduler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointMismatch(
                f"{path}: the saved weights do not fit this model ({str(e).strip().splitlines()[0]}): "
                "resume with the model settings the run started with, or start a new output folder"
            ) from None
        restore_rng(ckpt["rng"], rng)
        self.state = st = TrainState(
            ckpt["epoch"], ckpt["step"], ckpt["best_metric"], ckpt["best_epoch"], ckpt["waited"],
            [EpochRecord.from_dict(d) for d in ckpt["history"]],
        )
        position = EpochPosition.from_checkpoint(ckpt["position"]) if ckpt.get("position") else None
        if position is not None and position.epoch != st.epoch + 1:
            raise CheckpointError(f"{path} is inconsistent (a position in epoch {position.epoch} after "
                                  f"{st.epoch} epochs); start a new output folder")
        best_state = self._restore_best(ckpt, position, path)
        self._write_history()
        log.info("resuming from %s: %d epoch(s) done%s, best epoch %d (%s %.4f)", path, st.epoch,
                 f" and {position.done} batches of epoch {position.epoch}" if position else "",
                 st.best_epoch, self.settings.valid_metric, st.best_metric)
        return position, best_state

    def _restore_best(self, ckpt, position: EpochPosition | None, path: Path) -> dict[str, torch.Tensor] | None:
        st = self.state
        if st.best_epoch == 0:
            return None
        if position is None and st.best_epoch == st.epoch:
            # last.pt was written at the end of the best epoch: its weights are the best ones. best.pt
            # may be older (a kill between the two writes): write it again then.
            best_file = path.parent / "best.pt"
            try:
                current = load_checkpoint(best_file).get("epoch") == st.best_epoch
            except CheckpointError:
                current = False
            if not current and path.parent == self.out_dir:
                self._save_best(st.best_epoch, st.history[-1].valid)
            return copy.deepcopy(self.model.state_dict())
        best_file = path.parent / "best.pt"
        best = load_checkpoint(best_file)
        if best.get("epoch") != st.best_epoch:
            raise CheckpointError(
                f"{best_file} holds epoch {best.get('epoch')} but {path} says the best epoch is {st.best_epoch}: "
                "the folder mixes two runs; start a new output folder"
            )
        return best["state_dict"]

    # ------------------------------------------------------------------ signals

    @contextlib.contextmanager
    def _catch_signals(self) -> Iterator[None]:
        """SIGINT / SIGTERM set a flag the loop checks after each step (a second one stops at once);
        the previous handlers are put back afterwards."""
        self._signal = None
        if (self.out_dir is None and self.world == 1) or threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._signal is not None:
                raise KeyboardInterrupt
            self._signal = signum
            log.warning("%s: finishing the current step, then saving %s (again to stop at once)",
                        signal.Signals(signum).name, self.out_dir and self.out_dir / "last.pt")

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _interrupted(self, when: str) -> TrainingInterrupted:
        name = signal.Signals(self._signal).name
        return TrainingInterrupted(
            f"training interrupted by {name} {when}; its state is saved in {self.out_dir / 'last.pt'}. "
            f"To continue, rerun the same command with --resume (same --out {self.out_dir}), or in Python "
            f"train_run(config, {str(self.out_dir)!r}, resume=True)",
            self._signal, self.out_dir,
        )

    # ------------------------------------------------------------------ files

    def _payload(self, kind: str) -> dict[str, Any]:
        return {**self.checkpoint_extra, "format": CHECKPOINT_FORMAT, "kind": kind,
                "features": self.feature_manifest, "state_dict": self.model.state_dict()}

    def _save_last(self, optimizer, rng, position: EpochPosition | None = None) -> None:
        if not self.out_dir or not self.is_main:
            return
        st = self.state
        atomic_save({
            **self._payload("last"),
            "optimizer": optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "rng": capture_rng(rng),
            "epoch": st.epoch, "step": st.step, "best_metric": float(st.best_metric), "best_epoch": st.best_epoch,
            "waited": st.waited, "history": [r.as_dict() for r in st.history],
            "position": None if position is None else position.as_checkpoint(),
        }, self.out_dir / "last.pt")

    def _save_best(self, epoch: int, valid: dict[str, float]) -> None:
        if not self.out_dir or not self.is_main:
            return
        atomic_save({**self._payload("best"), "epoch": epoch, "valid": valid}, self.out_dir / "best.pt")

    def _write_history(self) -> None:
        """epochs.jsonl = the history so far (on resumption, epochs after the checkpoint are dropped)."""
        if not self.out_dir or not self.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._write(lambda: (self.out_dir / "epochs.jsonl").write_text(
            "".join(json.dumps(r.as_dict()) + "\n" for r in self.state.history)))

    def _write(self, action: Callable[[], Any]) -> None:
        try:
            action()
        except OSError as e:
            raise CheckpointError(f"cannot write in {self.out_dir}: {e.strerror or e}") from None

    def _log_epoch(self, record: EpochRecord) -> None:
        m = self.settings.valid_metric
        test = f"  test {m} {record.test[m]:.4f}" if record.test else ""
        log.info("epoch %d  loss %.4f  valid %s %.4f%s  (train %.1fs, eval %.2fs)",
                 record.epoch, record.loss or 0.0, m, record.valid[m], test, record.train_seconds, record.eval_seconds)
        if self.out_dir and self.is_main:
            def append():
                with open(self.out_dir / "epochs.jsonl", "a") as f:
                    f.write(json.dumps(record.as_dict()) + "\n")
            self._write(append)
            self._write(lambda: self.tensorboard.epoch(record.as_dict()))
        if self.on_epoch:
            self.on_epoch(record)
