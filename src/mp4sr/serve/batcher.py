"""Dynamic batching of concurrent requests: one forward pass for everything that is waiting.

Requests are queued; one worker takes the waiting jobs (up to ``max_size`` in all), runs ``fn(jobs)``
in its own thread (the event loop stays free to accept more; always the same thread, whose caches
stay warm) and answers each. Jobs that arrive while ``fn``
runs form the next batch: no added delay at low load, and a shared forward pass at high load.
"""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

BatchFn = Callable[[Sequence[Any]], Sequence[Any]]  # one result (or an Exception) per job


class MicroBatcher:
    def __init__(self, fn: BatchFn, max_size: int = 512, size: Callable[[Any], int] = lambda job: 1):
        self.fn, self.max_size, self.size = fn, max_size, size
        self._pending: deque[tuple[Any, asyncio.Future]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._thread: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring")
        self._worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        if self._thread is not None:
            self._thread.shutdown(wait=False, cancel_futures=True)
        self._worker = self._thread = None

    async def submit(self, job: Any) -> Any:
        if self._worker is None or self._wakeup is None:
            raise RuntimeError("the batcher is not started (start it in the app's lifespan)")
        future = asyncio.get_running_loop().create_future()
        self._pending.append((job, future))
        self._wakeup.set()
        return await future

    def _take(self) -> list[tuple[Any, asyncio.Future]]:
        """The oldest waiting jobs, at most ``max_size`` in all (a bigger job goes alone)."""
        group, total = [], 0
        while self._pending and (not group or total + self.size(self._pending[0][0]) <= self.max_size):
            job = self._pending.popleft()
            group.append(job)
            total += self.size(job[0])
        return group

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                group = [(job, f) for job, f in self._take() if not f.done()]  # skip clients that left
                if group:
                    await self._answer(group)

    async def _answer(self, group: list[tuple[Any, asyncio.Future]]) -> None:
        try:
            jobs = [job for job, _ in group]
            results = await asyncio.get_running_loop().run_in_executor(self._thread, self.fn, jobs)
        except Exception as e:  # noqa: BLE001 - handed to every waiting request, never lost
            results = [e] * len(group)
        for (_, future), result in zip(group, results):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
