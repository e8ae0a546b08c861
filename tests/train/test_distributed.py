"""torchrun with 2 CPU processes (gloo): the same run as one process with the same global batch."""

import json
import socket
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.e2e

SETTINGS = [
    "--model", "sasrec", "--dataset", "amazon-scientific-mm",
    "--set", "train.epochs=3", "--set", "train.batch_size=512", "--set", "train.progress=false",
    "--set", "train.threads=1", "--set", "params.dropout=0", "--set", "params.attn_dropout=0",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd, out):
    done = subprocess.run([*cmd, "train", *SETTINGS, "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    history = [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]
    return json.loads((out / "metrics.json").read_text()), history, done


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
def test_two_processes_match_one(tmp_path):
    single, single_hist, _ = _run([sys.executable, "-m", "mp4sr"], tmp_path / "one")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "mp4sr"]
    ddp, ddp_hist, done = _run(torchrun, tmp_path / "two")
    assert "distributed: 2 processes, backend gloo" in done.stderr
    # Stated tolerance: the same batches and an exactly re-weighted loss, so only floating-point
    # summation order differs: losses within 1e-3 relative, metrics within 0.005 absolute.
    assert len(ddp_hist) == len(single_hist) == 3
    for a, b in zip(single_hist, ddp_hist):
        assert abs(a["loss"] - b["loss"]) <= 1e-3 * a["loss"]
    for split in ("valid", "test"):
        for metric in ("ndcg@10", "recall@10", "recall@50"):
            assert abs(single[split][metric] - ddp[split][metric]) <= 0.005, (split, metric)
    # rank 0 alone wrote: one history line per epoch, one table printed, one TensorBoard event file
    assert done.stdout.count("best epoch") == 1
    assert len(list((tmp_path / "two" / "tensorboard").glob("events.out.tfevents.*"))) == 1
