"""`torchrun ... -m mp4sr features`: each process computes a shard, rank 0 merges them."""

import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _features(prefix, cache):
    env = {**os.environ, "MP4SR_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [*prefix, "features", "--dataset", "hm-sample", "--no-text"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    stores = sorted(p for p in cache.rglob("*.npy") if ".partial" not in str(p))
    assert stores, f"no store written under {cache}"
    return {p.relative_to(cache): np.load(p) for p in stores}, done


def test_torchrun_shards_and_merges_like_one_process(tmp_path, shared_data):
    one, _ = _features([sys.executable, "-m", "mp4sr"], tmp_path / "one")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "mp4sr"]
    two, done = _features(torchrun, tmp_path / "two")
    assert "distributed: 2 processes" in done.stderr and re.search(r"shard [01]/2 done", done.stdout + done.stderr)
    assert one.keys() == two.keys()
    for name in one:
        assert np.array_equal(one[name], two[name]), name
