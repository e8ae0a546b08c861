"""The functions behind `mp4sr recommend`, `mp4sr export` and `mp4sr serve` (wired in mp4sr.cli)."""

from __future__ import annotations

import ipaddress
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from rich.console import Console
from rich.table import Table

from mp4sr.devices import check_device
from mp4sr.serve.recommender import Recommendation, Recommender

log = logging.getLogger("mp4sr.serve")


def split_ids(*groups: Sequence[str] | None) -> list[str]:
    """Item ids from CLI values, in order; a value may hold several ids separated by commas or spaces."""
    return [item for group in groups for value in (group or []) for item in value.replace(",", " ").split()]


def recommendation_table(rec: Recommender, result: Recommendation, title: str) -> Table:
    table = Table(title=title)
    for name, justify in (("rank", "right"), ("item", "left"), ("score", "right"), ("text", "left")):
        table.add_column(name, justify=justify)
    for rank, (item, score) in enumerate(result.items, start=1):
        text = rec.item_text[rec.index[item]] or ""
        table.add_row(str(rank), item, f"{score:.4f}", text[:70] + ("…" if len(text) > 70 else ""))
    return table


def recommend_command(checkpoint: str | Path, history: Sequence[str], k: int = 10, *, exclude_seen: bool = True,
                      skip_unknown: bool = False, as_json: bool = False) -> Recommendation:
    """`mp4sr recommend`: print the top-k after ``history`` as a table, or as JSON with ``as_json``."""
    rec = Recommender.load(checkpoint)
    result = rec.rank([list(history)], k, exclude_seen, skip_unknown=skip_unknown)[0]
    if as_json:
        items = [{"item_id": item, "score": score} for item, score in result.items]
        print(json.dumps({"items": items, "fallback": result.fallback, "skipped": result.skipped}, indent=2))
        return result
    note = " (empty history: most popular items)" if result.fallback else ""
    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(recommendation_table(rec, result, f"top {k} from {rec.model_name} after {len(history)} items{note}"))
    if result.skipped:
        Console(stderr=True).print(f"skipped unknown ids: {', '.join(result.skipped)}")
    return result


def export_command(checkpoint: str | Path, out: str | Path, k: int = 10, *, exclude_seen: bool = True,
                   batch_size: int = 1024, echo: Callable[[str], None] = print, device: str = "cpu") -> Path:
    """`mp4sr export`: the top-k of every user of the checkpoint's dataset to ``out`` (.parquet or .csv),
    scored on ``device``."""
    from mp4sr.serve.export import export_topk

    rec = Recommender.load(checkpoint, device=check_device(device, setting="--device"))
    rows = export_topk(rec, out, k, exclude_seen, batch_size)
    echo(f"wrote the top {k} of {rec.users.n_users:,} users ({rows:,} rows) to {out}")
    return Path(out)


def export_model_command(checkpoint: str | Path, out: str | Path, *, images: bool = False,
                         echo: Callable[[str], None] = print) -> Path:
    """`mp4sr export-model`: the run's model as a folder that serves with no dataset or feature cache."""
    from mp4sr.serve.model_file import IMAGES_DIR
    from mp4sr.serve.packaging import export_model

    file = export_model(checkpoint, out, images=images)
    echo(f"wrote {file} ({file.stat().st_size / 2**20:.1f} MiB) and its model card {Path(out) / 'README.md'}; "
         f"serve it with `mp4sr serve --checkpoint {out}`")
    if images:
        photos = Path(out) / IMAGES_DIR
        copied = sum(1 for _ in photos.iterdir()) if photos.is_dir() else 0
        echo(f"copied {copied:,} item photos into {photos}" if copied else
             "--images: the catalogue has no photo files to copy (its image vectors, if any, are in the model)")
    return file


def serve_command(checkpoint: str | Path, host: str = "127.0.0.1", port: int = 8000, *,
                  threads: int | None = None, log_level: str = "info", device: str = "cpu") -> None:
    """`mp4sr serve`: the HTTP service on ``host:port`` (loopback by default; it has no authentication),
    scoring on ``device``."""
    import torch
    import uvicorn

    from mp4sr.serve.app import create_app

    if threads:
        torch.set_num_threads(threads)
    if not _is_loopback(host):
        log.warning("binding %s: the service has no authentication; put it behind a proxy that has", host)
    app = create_app(Recommender.load(checkpoint, device=check_device(device, setting="--device")))
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=log_level == "debug")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
