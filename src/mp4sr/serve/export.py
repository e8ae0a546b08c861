"""Top-k of every user the model was trained on, written to Parquet or CSV in batches."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mp4sr.errors import ConfigError, MP4SRError
from mp4sr.serve.recommender import Recommender

FORMATS = (".parquet", ".csv")


def user_topk_frame(rec: Recommender, users: np.ndarray, k: int, exclude_seen: bool) -> pd.DataFrame:
    """Long table (user_id, rank, item_id, score) of ``users`` (indexes), after their whole sequence."""
    seqs = rec.users.sequences
    start, end = seqs.offsets[users], seqs.offsets[users + 1]
    scores = rec.score_windows(torch.from_numpy(seqs.items), start, end)
    tops = rec.select_top(scores, [seqs[u] for u in users], k, exclude_seen)
    counts = [len(top) for top in tops]
    return pd.DataFrame({
        "user_id": np.repeat(rec.users.ids[users].astype(str), counts),
        "rank": np.concatenate([np.arange(1, n + 1) for n in counts]).astype(np.int32),
        "item_id": [item for top in tops for item, _ in top],
        "score": np.array([score for top in tops for _, score in top], dtype=np.float32),
    })


def export_topk(rec: Recommender, out: str | Path, k: int = 10, exclude_seen: bool = True,
                batch_size: int = 1024) -> int:
    """Write the top ``k`` of every user (after the whole known sequence) to ``out`` (.parquet or .csv),
    ``batch_size`` users at a time; the file appears complete or not at all. Returns the rows written."""
    out = Path(out)
    if out.suffix not in FORMATS:
        raise ConfigError(f"export file {out}: the suffix must be one of {', '.join(FORMATS)}")
    if rec.users is None:
        raise MP4SRError("this recommender knows no users: load it with Recommender.load(checkpoint)")
    from mp4sr.evaluate.ranking import users_per_chunk

    batch_size = users_per_chunk(batch_size, rec.n_items)  # bounded score matrices on large catalogues
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}{out.suffix}")
    rows, writer = 0, None
    try:
        for first in range(0, rec.users.n_users, batch_size):
            users = np.arange(first, min(first + batch_size, rec.users.n_users))
            frame = user_topk_frame(rec, users, k, exclude_seen)
            writer = _append(frame, tmp, writer, first=first == 0)
            rows += len(frame)
        if writer is not None:
            writer.close()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return rows


def _append(frame: pd.DataFrame, path: Path, writer, first: bool):
    """Append ``frame`` to ``path``; returns the open Parquet writer (None for CSV)."""
    if path.suffix == ".csv":
        frame.to_csv(path, mode="w" if first else "a", header=first, index=False)
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    writer = writer or pq.ParquetWriter(path, table.schema)
    writer.write_table(table)
    return writer
