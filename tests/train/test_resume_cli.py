"""A real run of `mp4sr train` killed with SIGKILL mid-epoch, resumed, stopped again with SIGTERM,
resumed again: its metrics.json equals an uninterrupted run's."""

from __future__ import annotations

import inspect
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mp4sr.cli

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif("resume" not in inspect.signature(mp4sr.cli.train).parameters,
                       reason="`mp4sr train` has no --resume option yet"),
]

ARGS = ["--model", "sasrec", "--dataset", "amazon-scientific-mm", "--set", "train.epochs=6",
        "--set", "train.batch_size=256", "--set", "train.progress=false", "--set", "train.threads=1",
        "--set", "params.layers=1", "--set", "params.hidden=32", "--set", "params.ffn=64"]  # 0.5-1 s epochs


def start(out: Path, log: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mp4sr", "train", "--out", str(out), *ARGS, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"), text=True)


def wait_until(condition, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) too early:\n{log.read_text()[-3000:]}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"timed out:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 240) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"timed out:\n{log.read_text()[-3000:]}")


def test_sigkill_then_sigterm_then_resume_equals_uninterrupted(tmp_path):
    full_out, out = tmp_path / "full", tmp_path / "interrupted"
    full = start(full_out, tmp_path / "full.log")  # the reference runs beside the interrupted one

    log1 = tmp_path / "run1.log"
    run = start(out, log1)
    epochs = out / "epochs.jsonl"
    wait_until(lambda: epochs.is_file() and len(epochs.read_text().splitlines()) >= 1, run, log1)
    time.sleep(0.2)  # into epoch 2 (or while it saves: any moment must be resumable)
    run.send_signal(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL

    log2 = tmp_path / "run2.log"
    run = start(out, log2, "--resume")
    wait_until(lambda: re.search(r"epoch \d+\s+loss", log2.read_text()), run, log2)  # one epoch after resuming
    time.sleep(0.2)
    run.send_signal(signal.SIGTERM)
    assert finish(run, log2) == 128 + signal.SIGTERM, log2.read_text()[-3000:]
    text = " ".join(log2.read_text().split())  # rich wraps long lines
    assert "resuming from" in text and "interrupted by SIGTERM" in text and "--resume" in text
    assert str(out) in "".join(text.split())

    log3 = tmp_path / "run3.log"
    assert finish(start(out, log3, "--resume"), log3) == 0, log3.read_text()[-3000:]
    assert finish(full, tmp_path / "full.log") == 0, (tmp_path / "full.log").read_text()[-3000:]

    resumed = json.loads((out / "metrics.json").read_text())
    reference = json.loads((full_out / "metrics.json").read_text())
    assert resumed == reference
    assert [json.loads(line)["epoch"] for line in epochs.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]
