import os
import platform
import subprocess
import sys

import pytest

from mp4sr.config import RunConfig
from resume_support import build_trainer, small_config

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

# Eight rounds of what a training step does: allocate and touch several blocks, then free them all.
# Prints whether the settings took effect and the page faults of each round (eight fresh 4 MiB blocks
# cost 8,192 faults of 4 KiB pages).
PROBE = """
import resource, torch
from mp4sr.train.allocator import keep_freed_memory
applied = keep_freed_memory()
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.ones(2**20) for _ in range(8)]
    del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(applied, *[faults() for _ in range(8)])
"""


def probe(**env) -> tuple[bool, list[int]]:
    environ = {k: v for k, v in os.environ.items() if k != "MP4SR_MALLOC"} | env
    out = subprocess.run([sys.executable, "-c", PROBE], env=environ, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", [int(x) for x in out[1:]]


def test_freed_memory_is_reused_instead_of_faulted_in_again():
    applied, faults = probe()
    assert applied
    assert sum(faults[-4:]) < 4096  # steady state: the freed blocks come back without new pages


def test_glibc_defaults_on_request():
    applied, faults = probe(MP4SR_MALLOC="default")
    assert not applied
    # glibc's own defaults usually trim the heap after each round, so its pages are faulted in again
    # (not always: its thresholds adapt), which is why training does not keep them


def test_training_asks_for_it(split, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("mp4sr.train.trainer.keep_freed_memory", lambda: calls.append(True) or True)
    base = small_config()
    config = RunConfig(**{**base.model_dump(), "train": {**base.train.model_dump(), "epochs": 1}})
    build_trainer(split, tmp_path, config=config).fit()
    assert calls == [True]
