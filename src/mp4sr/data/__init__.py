"""Datasets: readers, the canonical Dataset, leave-one-out splits and batches."""

from mp4sr.data.batching import SequenceBatch, eval_batches, train_batches
from mp4sr.data.dataset import Dataset, ItemCatalogue, Sequences, VectorFiles, join_datasets
from mp4sr.data.loader import exclude_users_of, find_dataset, list_datasets, load_dataset, training_data
from mp4sr.data.split import EvalSet, LeaveOneOut, TrainExamples, leave_one_out

__all__ = [
    "Dataset", "ItemCatalogue", "Sequences", "VectorFiles", "SequenceBatch", "EvalSet", "LeaveOneOut", "TrainExamples",
    "eval_batches", "train_batches", "exclude_users_of", "join_datasets", "find_dataset", "list_datasets", "load_dataset", "leave_one_out", "training_data",
]
