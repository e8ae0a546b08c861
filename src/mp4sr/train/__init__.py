"""Training: the loop, checkpoints and whole runs."""

from mp4sr.train.run import RunOutput, train_run
from mp4sr.train.trainer import Trainer, TrainResult, atomic_save, seed_everything

__all__ = ["RunOutput", "Trainer", "TrainResult", "atomic_save", "seed_everything", "train_run"]
