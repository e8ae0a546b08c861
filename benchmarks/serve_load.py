"""Load test of `mp4sr serve`: latency and throughput of POST /recommend on loopback.

Trains a small SASRec on amazon-scientific (or takes --checkpoint: a run folder, or an exported model
folder, which serves without the dataset), starts the service in a subprocess
on 127.0.0.1 and a free port, and sends real users' histories (bounded in count and time):

- per-request: one history per request (k=10) at concurrency 1 and 32 -> requests/s, p50 / p99 latency;
- batch: --batch histories per request -> histories/s, and in-process ``recommend_batch``;
- the ratio of batch throughput to per-request throughput (goal >= 10x; p99 goal < 50 ms at 32).

Requests go over keep-alive loopback connections with a minimal asyncio HTTP/1.1 client (see
``Connection``); httpx only checks that the server is up.

    python benchmarks/serve_load.py [--checkpoint runs/x] [--requests 2000] [--seconds 20]

The client runs on the same machine as the server: both share its cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


CLIENT_LOOP = "uvloop" if _has("uvloop") else "asyncio"


def run_async(coroutine):
    """Run the client on uvloop when it is installed (as the server does): the client shares the cores."""
    if CLIENT_LOOP == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coroutine)
    return asyncio.run(coroutine)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_checkpoint(dataset: str, epochs: int, out: Path) -> Path:
    from mp4sr.config import RunConfig, build_config
    from mp4sr.train import train_run

    overrides = [f"train.epochs={epochs}", "train.progress=false", "train.batch_size=512", "train.threads=1"]
    print(f"training sasrec on {dataset} for {epochs} epoch(s) -> {out}", flush=True)
    train_run(build_config(RunConfig, None, overrides, model="sasrec", dataset=dataset), out)
    return out / "best.pt"


def user_histories(checkpoint: Path, n: int, seed: int = 0) -> tuple[list[list[str]], object]:
    """``n`` real histories (a user's sequence without its last item), drawn at random."""
    from mp4sr.serve import Recommender

    rec = Recommender.load(checkpoint)
    users = np.random.default_rng(seed).integers(0, rec.users.n_users, n)
    return [[str(rec.item_ids[i]) for i in rec.users.sequences[u][:-1]] for u in users], rec


def start_server(checkpoint: Path, port: int, threads: int | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mp4sr.serve", "--checkpoint", str(checkpoint), "--port", str(port),
           "--host", "127.0.0.1", "--log-level", "warning"]
    if threads:
        cmd += ["--threads", str(threads)]
    process = subprocess.Popen(cmd)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with code {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.terminate()
    raise SystemExit("the server did not start within 120 s")


class Connection:
    """A minimal HTTP/1.1 keep-alive client over asyncio streams. httpx's AsyncClient costs several ms
    of CPU per request at concurrency 32 on a 2-core machine, more than the server: it would measure
    the client, not the service."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> "Connection":
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def post(self, path: str, body: dict) -> bytes:
        data = json.dumps(body).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
        content = await self.reader.readexactly(length)
        if lines[0].split()[1] != "200":
            raise RuntimeError(f"{lines[0]}: {content[:300]!r}")
        return content

    def close(self) -> None:
        self.writer.close()


async def load(port: int, bodies: list[dict], concurrency: int, seconds: float) -> dict:
    """POST ``bodies`` to /recommend with ``concurrency`` requests in flight, stopping after ``seconds``."""
    latencies: list[float] = []
    queue = iter(bodies)
    deadline = time.perf_counter() + seconds
    connections = [await Connection.open(port) for _ in range(concurrency)]
    for connection, body in zip(connections, bodies):  # warm up every connection
        await connection.post("/recommend", body)

    async def worker(connection: Connection) -> None:
        for body in queue:
            if time.perf_counter() > deadline:
                return
            t0 = time.perf_counter()
            await connection.post("/recommend", body)
            latencies.append(time.perf_counter() - t0)

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(c) for c in connections))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    for connection in connections:
        connection.close()
    ms = np.array(latencies) * 1000
    return {"requests": len(ms), "seconds": elapsed, "rps": len(ms) / elapsed,
            "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "client_cpu_ms": cpu * 1000 / max(len(ms), 1)}


def in_process_batch(rec, histories: list[list[str]], k: int, seconds: float) -> float:
    """Histories/s of ``Recommender.recommend_batch`` (no HTTP)."""
    rec.recommend_batch(histories[:64], k=k)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        rec.recommend_batch(histories, k=k)
        done += len(histories)
    return done / (time.perf_counter() - started)


def measure_single(server: subprocess.Popen, port: int, histories: list[list[str]], args) -> dict[int, float]:
    """One history per request at each concurrency; prints a row each, returns requests/s."""
    print(f"{'concurrency':>11} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'server CPU ms/req':>18} {'client CPU ms/req':>18} {'load avg':>9}")
    bodies = [{"history": h, "k": args.k} for h in histories[: args.requests]]
    rates = {}
    for c in args.concurrency:
        cpu = cpu_seconds(server.pid)
        r = run_async(load(port, bodies, c, args.seconds))
        cpu = (cpu_seconds(server.pid) - cpu) * 1000 / (r["requests"] + c)
        rates[c] = r["rps"]
        print(f"{c:>11} {r['requests']:>9} {r['rps']:>8.1f} {r['p50']:>8.1f} {r['p99']:>8.1f} {cpu:>18.2f} "
              f"{r['client_cpu_ms']:>18.2f} {os.getloadavg()[0]:>9.1f}")
    return rates


def measure_batch(server: subprocess.Popen, port: int, histories: list[list[str]], args) -> float:
    """``args.batch`` histories per request, one request at a time; returns histories/s."""
    n_batches = max(1, min(args.requests // args.batch, 20))
    bodies = [{"histories": histories[i * args.batch : (i + 1) * args.batch], "k": args.k} for i in range(n_batches)]
    cpu = cpu_seconds(server.pid)
    b = run_async(load(port, bodies, 1, args.seconds))
    cpu = (cpu_seconds(server.pid) - cpu) * 1000 / ((b["requests"] + 1) * args.batch)
    rate = b["rps"] * args.batch
    print(f"\nbatch of {args.batch} over HTTP: {rate:,.0f} histories/s (p50 {b['p50']:.0f} ms per batch, "
          f"server CPU {cpu:.2f} ms per history)")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="an exported model folder, best.pt or its run folder (default: train one)")
    parser.add_argument("--dataset", default="amazon-scientific")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--requests", type=int, default=2000, help="requests per concurrency level (at most)")
    parser.add_argument("--seconds", type=float, default=20, help="time limit per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--batch", type=int, default=256, help="histories per batch request")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the server and of recommend_batch (1: on 2 shared cores more spin)")
    parser.add_argument("--client-loop", choices=["uvloop", "asyncio"], default=CLIENT_LOOP,
                        help="the load client's event loop")
    args = parser.parse_args()
    globals()["CLIENT_LOOP"] = args.client_loop

    import torch

    torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint or train_checkpoint(args.dataset, args.epochs, Path(tempfile.mkdtemp(prefix="serve-load-")))
    histories, rec = user_histories(checkpoint, max(args.requests, args.batch))
    port = free_port()
    server = start_server(checkpoint, port, args.threads)
    try:
        http = "httptools" if _has("httptools") else "h11"  # what uvicorn picks by itself
        print(f"\n{rec.model_name} on {rec.payload.get('dataset')} ({rec.n_items:,} items), k={args.k}, "
              f"{os.cpu_count()} cores (shared with the client and anything else running); "
              f"server: uvicorn {http}, {'uvloop' if _has('uvloop') else 'asyncio'}, {args.threads} torch thread(s); "
              f"client: {args.client_loop}")
        rates = measure_single(server, port, histories, args)
        http_rate = measure_batch(server, port, histories, args)
        local_rate = in_process_batch(rec, histories[: args.batch], args.k, min(args.seconds, 5))
        print(f"recommend_batch in process: {local_rate:,.0f} histories/s")
        for c, rate in rates.items():
            print(f"batch (HTTP) / per-request at concurrency {c}: {http_rate / rate:.1f}x")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
