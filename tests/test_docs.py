"""The command blocks of the docs run as written, in order, as a new user would right after the README's
main job: every ```bash block of each file in DOCS, in one fresh working folder, with the real data
(``$MP4SR_DATA_DIR``) and a feature cache of these tests' own, kept in pytest's cache folder
(``.pytest_cache``) between runs: the first run computes the MiniLM text vectors of amazon-scientific
(a minute of 2 cores), later runs reuse them as `mp4sr features` does.

A block is split into commands (continuation lines joined, comments dropped, ``&&`` chains split); a
new block added to these files is run too. What the harness changes, and nothing else:

- a command that matches a rule of SKIPPED is not run (each rule says why, and must match some command);
- a command that matches a rule of SHORTENED gets that rule's options appended: training commands
  train for 0 epochs (they still build the model, rank the validation and test sets and write the
  checkpoint and reports that later commands read; tests/e2e train for real), load tests run for half
  a second; the docs' own settings stay;
- ``mp4sr serve`` starts in the background on a free port (the documented port, 8000 by default, is
  replaced by it in the file's later commands) and is stopped at the end of the file;
- ``curl`` fails on an HTTP error status (``--fail-with-body``);
- ``mp4sr``, ``.venv/bin/mp4sr`` and ``python`` are this test run's interpreter and source tree.
"""

from __future__ import annotations

import os
import re
import resource
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/serving.md")  # run in this order, in one working folder
LINKED = ("configs", "benchmarks", "scripts")  # repository folders the commands name
MP4SR = r"^(?:\.venv/bin/)?mp4sr"

SKIPPED = {  # rule (a regex on the command) -> why it is not run here
    r"^bash scripts/setup\.sh$": "sets up a machine: the tests run in one that is set up",
    r"-m pytest": "runs the test suite, which runs this test",
    rf"{MP4SR} experiment \S+ --jobs": "a whole experiment (every model, dataset and seed) takes hours",
    r"^torchrun ": "starts 4 processes on the cores the tests share; tests/train/test_distributed.py and "
                   "tests/features/test_features_distributed.py run both launches on 2",
}
NO_EPOCHS = "--set train.epochs=0"
SHORTENED = {  # rule -> options appended
    rf"{MP4SR} (train|pretrain|finetune) ": NO_EPOCHS,
    rf"{MP4SR} run ": f"--pretrain-set train.epochs=0 {NO_EPOCHS}",
    rf"{MP4SR} tune ": "--trials 1 --set train.epochs=1",  # the last --trials is the one taken
    r"^python benchmarks/serve_load\.py": "--epochs 0 --requests 64 --batch 32 --seconds 0.5",
}
SERVE = rf"{MP4SR} serve "
TIMEOUT = 600  # seconds per command


@dataclass
class Command:
    doc: str
    line: int  # of the block's first line
    text: str

    def __str__(self) -> str:
        return f"{self.doc}, block at line {self.line}: {self.text}"


def _outside_quotes(text: str):
    """(index, char, quoted) of each character of ``text``, with shell quoting tracked."""
    quote = None
    for i, char in enumerate(text):
        if quote is None and char in "'\"":
            quote = char
        elif char == quote:
            quote = None
        yield i, char, quote is not None


def split_commands(block: str) -> list[str]:
    """The commands of a bash block: continuations joined, comments dropped, ``&&`` chains split."""
    commands = []
    for line in re.sub(r"\s*\\\n\s*", " ", block).splitlines():
        cut = next((i for i, c, quoted in _outside_quotes(line) if c == "#" and not quoted
                    and (i == 0 or line[i - 1].isspace())), len(line))
        line, start = line[:cut], 0
        for i, c, quoted in _outside_quotes(line):
            if not quoted and line.startswith("&&", i) and i >= start:
                commands.append(line[start:i])
                start = i + 2
        commands.append(line[start:])
    return [c.strip() for c in commands if c.strip()]


def doc_commands(doc: str) -> list[Command]:
    text = (ROOT / doc).read_text()
    out = []
    for match in re.finditer(r"^```bash\n(.*?)^```", text, re.M | re.S):
        line = text.count("\n", 0, match.start()) + 1
        out += [Command(doc, line, c) for c in split_commands(match.group(1))]
    return out


def skip_reason(command: str) -> str | None:
    return next((why for rule, why in SKIPPED.items() if re.search(rule, command)), None)


def shortened(command: str) -> str:
    extra = [options for rule, options in SHORTENED.items() if re.search(rule, command)]
    return " ".join([command, *extra])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, shared_data, pytestconfig) -> tuple[Path, dict[str, str]]:
    """A fresh working folder (with the repository folders the docs name) and the commands' environment."""
    folder = tmp_path_factory.mktemp("docs")
    for name in LINKED:
        (folder / name).symlink_to(ROOT / name)
    bin_ = folder / ".venv" / "bin"
    bin_.mkdir(parents=True)
    for name, runs in (("python", shlex.quote(sys.executable)), ("mp4sr", f"{shlex.quote(sys.executable)} -m mp4sr")):
        (bin_ / name).write_text(f'#!/bin/sh\nexec {runs} "$@"\n')
        (bin_ / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT / "src"),
           "MP4SR_DATA_DIR": str(shared_data), "MP4SR_CACHE_DIR": str(pytestconfig.cache.mkdir("mp4sr-docs-cache")),
           "HF_HUB_OFFLINE": "1", "COLUMNS": "160"}
    return folder, env


def start_server(command: str, folder: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str, int]:
    """Start ``command`` (an `mp4sr serve`) on a free port; (process, the documented port, the port used)."""
    documented = re.search(r"--port[ =](\d+)", command)
    port = free_port()
    command = (re.sub(r"--port[ =]\d+", f"--port {port}", command) if documented else f"{command} --port {port}")
    process = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=folder, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with code {process.returncode}:\n{process.stdout.read()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process, documented.group(1) if documented else "8000", port
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    pytest.fail(f"the server did not answer /health within 120 s: {command}")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.mark.parametrize("doc", DOCS)
def test_the_docs_command_blocks_run_in_order(doc, workdir):
    folder, env = workdir
    servers, ports = [], {}
    try:
        for command in doc_commands(doc):
            if skip_reason(command.text):
                continue
            text = shortened(command.text)
            for documented, used in ports.items():
                text = re.sub(rf"(localhost|127\.0\.0\.1):{documented}\b", rf"\1:{used}", text)
            text = re.sub(r"^curl ", "curl --fail-with-body ", text)
            if re.search(SERVE, text):
                process, documented, used = start_server(text, folder, env)
                servers.append(process)
                ports[documented] = used
                continue
            started, cpu = time.perf_counter(), _children_cpu()
            done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", text], cwd=folder, env=env,
                                  capture_output=True, text=True, timeout=TIMEOUT)
            print(f"{time.perf_counter() - started:7.1f} s {_children_cpu() - cpu:7.1f} s CPU  {text}")
            assert done.returncode == 0, (f"{command}\nran as: {text}\nexit code {done.returncode}\n"
                                          f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    finally:
        for process in servers:
            process.terminate()
            process.wait(10)


def test_every_skip_and_shortening_rule_matches_a_command():
    """A rule that matches nothing is stale (the command it was for has changed or gone)."""
    commands = [c.text for doc in DOCS for c in doc_commands(doc)]
    for rule in [*SKIPPED, *SHORTENED, SERVE]:
        assert any(re.search(rule, c) for c in commands), f"no command of {DOCS} matches {rule!r}"


def test_blocks_are_split_into_commands():
    block = ("bash scripts/setup.sh && .venv/bin/mp4sr run --out runs/all   # the main job\n"
             "# a comment line\n"
             "curl -s localhost:8000/recommend -H 'content-type: application/json' \\\n"
             "     -d '{\"history\": [\"A#1\"], \"k\": 5}'\n")
    assert split_commands(block) == [
        "bash scripts/setup.sh", ".venv/bin/mp4sr run --out runs/all",
        "curl -s localhost:8000/recommend -H 'content-type: application/json' -d '{\"history\": [\"A#1\"], \"k\": 5}'"]
    assert shortened("mp4sr run --dataset x") == "mp4sr run --dataset x --pretrain-set train.epochs=0 --set train.epochs=0"
    assert skip_reason(".venv/bin/python -m pytest -q") and not skip_reason("mp4sr recommend --checkpoint m")
