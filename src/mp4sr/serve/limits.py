"""The bounds of what the HTTP service accepts (a request beyond them is refused: 413 or 422)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeLimits:
    max_k: int = 1000
    max_history: int = 2000  # ids accepted per history (the model reads the last max_len of them)
    max_batch: int = 1024  # histories per request
    max_candidates: int = 100_000
    max_new_items: int = 1000  # items per POST /items
    max_id_length: int = 256
    max_body_bytes: int = 32 * 2**20  # larger requests -> 413 (where FastAPI supports max_body_size)
