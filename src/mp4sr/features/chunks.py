"""Resumable, shardable computation of one vector per input, in fixed chunks.

The distinct inputs of an extraction (sentences, image paths) are cut into chunks of ``chunk_size``;
each finished chunk is saved to a ``.partial`` folder beside the future store. A restart after an
interruption computes only the chunks that are missing; shard ``i`` of ``n`` computes the chunks
``c`` with ``c % n == i``. Chunks are the same whatever the sharding, so merging the shards'
chunks gives exactly what one pass gives.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from mp4sr.errors import ConfigError, DataError


@dataclass
class ChunkResult:
    """Vectors of a run of inputs; ``ok`` False where an input could not be encoded (reported in ``problems``)."""

    vectors: np.ndarray
    ok: np.ndarray
    problems: list[str]
    notes: list[str] | None = None  # per input, e.g. the keyword sentence of an image


Encode = Callable[[list[Any]], ChunkResult]


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, value: "str | tuple[int, int] | Shard | None") -> "Shard | None":
        """'I/N' or (I, N), with 0 <= I < N; None for no sharding."""
        if value is None or isinstance(value, Shard):
            return value
        try:
            i, n = (int(x) for x in (value.split("/") if isinstance(value, str) else value))
        except (ValueError, TypeError):
            raise ConfigError(f"shard {value!r} must look like I/N, e.g. 0/4 (shard 0 of 4)") from None
        if not 0 <= i < n:
            raise ConfigError(f"shard {value!r}: need 0 <= I < N (shards are numbered from 0)")
        return cls(i, n)

    def owns(self, chunk: int) -> bool:
        return chunk % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def partial_dir(store_path: Path) -> Path:
    return store_path.parent / f"{store_path.name}.partial"


def _chunk_path(folder: Path, chunk: int) -> Path:
    return folder / f"chunk-{chunk:06d}.npz"


def _copy_parts(folder: Path, parts: Sequence[Path]) -> None:
    """Bring in the chunks that shards computed elsewhere: '.partial' folders copied from other machines
    (under their own name, or inside a parent folder). Parts of other stores are skipped; a part of this
    store made from other inputs or settings is an error."""
    plan = json.loads((folder / "plan.json").read_text())
    for part in (c for p in map(Path, parts) for c in (p, p / folder.name) if c.name == folder.name and c.is_dir()):
        plan_file = part / "plan.json"
        if not plan_file.is_file() or json.loads(plan_file.read_text()) != plan:
            raise DataError("this shard was computed from other inputs or settings than this merge; rerun it "
                            "with the same dataset, encoders and options", part)
        for chunk in part.glob("chunk-*.npz"):
            if not (folder / chunk.name).is_file():
                tmp = folder / f".{chunk.name}.{uuid.uuid4().hex[:8]}"
                shutil.copyfile(chunk, tmp)
                os.replace(tmp, folder / chunk.name)


def _prepare(folder: Path, plan: dict[str, Any]) -> None:
    """Keep the chunks of an earlier run only if it had exactly this plan (same inputs, same chunking)."""
    plan_file = folder / "plan.json"
    if plan_file.is_file():
        try:
            same = json.loads(plan_file.read_text()) == plan
        except ValueError:
            same = False
        if not same:
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not plan_file.is_file():
        tmp = folder / f".plan.json.{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps(plan))
        os.replace(tmp, plan_file)


def _save_chunk(path: Path, result: ChunkResult) -> None:
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        np.savez(
            f,
            vectors=np.asarray(result.vectors, dtype=np.float32),
            ok=np.asarray(result.ok, dtype=bool),
            problems=np.array(result.problems, dtype=str),
            notes=np.array(result.notes if result.notes is not None else [], dtype=str),
        )
    os.replace(tmp, path)  # a chunk file exists only once complete: an interruption never leaves half a chunk


def _load_chunk(path: Path) -> ChunkResult:
    with np.load(path) as z:
        notes = z["notes"].tolist()
        return ChunkResult(z["vectors"], z["ok"], z["problems"].tolist(), notes or None)


def missing_chunks(folder: Path, n_chunks: int) -> list[int]:
    return [c for c in range(n_chunks) if not _chunk_path(folder, c).is_file()]


def compute_chunked(
    inputs: Sequence[Any],
    encode: Encode,
    folder: Path,
    plan_hash: str,
    chunk_size: int,
    shard: Shard | None = None,
    allow_compute: bool = True,
    progress: bool = True,
    desc: str = "encoding",
    on_chunk: Callable[[int], None] | None = None,
    parts: Sequence[Path] = (),
    assemble: bool = True,
) -> ChunkResult | None:
    """All inputs' vectors, or None when this shard is done but others still are not (or ``assemble`` is
    False: compute the chunks, read nothing back).

    ``on_chunk(c)`` is called after chunk ``c`` is saved (progress reporting, tests of resuming).
    With ``allow_compute=False`` (merging shards) nothing is computed and missing chunks are an error;
    ``parts`` are shards' '.partial' folders from elsewhere whose chunks are copied in first.
    """
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
    n_chunks = -(-len(inputs) // chunk_size)
    _prepare(folder, {"plan_hash": plan_hash, "n_inputs": len(inputs), "chunk_size": chunk_size})
    _copy_parts(folder, parts)
    missing = missing_chunks(folder, n_chunks)
    if missing and not allow_compute:
        raise DataError(_missing_message(missing, n_chunks), folder)
    todo = [c for c in missing if shard is None or shard.owns(c)]
    with tqdm(total=sum(len(inputs[c * chunk_size : (c + 1) * chunk_size]) for c in todo),
              desc=desc, disable=not progress, unit="input") as bar:
        for c in todo:
            part = list(inputs[c * chunk_size : (c + 1) * chunk_size])
            _save_chunk(_chunk_path(folder, c), encode(part))
            bar.update(len(part))
            if on_chunk is not None:
                on_chunk(c)
    if not assemble or missing_chunks(folder, n_chunks):
        return None
    return _concat([_load_chunk(_chunk_path(folder, c)) for c in range(n_chunks)])


def _missing_message(missing: list[int], n_chunks: int) -> str:
    shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
    return (
        f"{len(missing)} of {n_chunks} chunks are not computed yet (chunks {shown}). Run every shard "
        f"(`mp4sr features ... --shard I/N` for I = 0..N-1, with the same settings) and copy their "
        f"'.partial' folders here before merging."
    )


def _concat(chunks: list[ChunkResult]) -> ChunkResult:
    """Join chunks; a chunk where nothing could be encoded may have 0 columns, so it is widened."""
    dim = max((c.vectors.shape[1] for c in chunks if c.vectors.ndim == 2), default=0)
    vectors = [c.vectors if c.vectors.shape[1:] == (dim,) else np.zeros((len(c.ok), dim), np.float32) for c in chunks]
    has_notes = any(c.notes for c in chunks)
    return ChunkResult(
        vectors=np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32),
        ok=np.concatenate([c.ok for c in chunks]) if chunks else np.zeros(0, bool),
        problems=[p for c in chunks for p in c.problems],
        notes=[n for c in chunks for n in (c.notes or [""] * len(c.ok))] if has_notes else None,
    )
