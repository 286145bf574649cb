"""Micro-batching: concurrent requests wait a moment and share one encoder call.

Each request puts its texts on a queue and awaits a future. One worker takes everything that is waiting
(requests that arrived while the previous batch ran) plus, if ``max_wait_ms`` > 0, whatever arrives within
that time (up to ``max_batch`` texts), runs ``fn`` once on all of it, and hands each request its own slice
back. With ``max_wait_ms=0`` a lone request never waits, and batches grow by themselves under load.

Where ``fn`` runs: in the event loop itself (``threaded=False``, what the service does), or in a worker
thread (``threaded=True``), so that the loop keeps reading requests meanwhile. A short query's encoder call
is hundreds of small PyTorch operations, each releasing and retaking the GIL, so a worker thread fights the
event loop for the GIL at every one of them: on 2 cores the threaded service answered 700-930 searches/s at
8 concurrent clients, the inline one 1,000-1,270 (bench/RESULTS.md). Inline, requests that arrive during a
call wait in their sockets; before each call the worker lets the loop turn until ``SETTLE_TURNS`` turns in a
row bring no new request, so that requests already read but still on their way through the framework join
the batch (8 clients: 6.8 queries per call instead of 2.4). This costs a lone request about 0.05 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class _Job:
    items: Sequence[Any]
    future: asyncio.Future[Any]


@dataclass
class BatchStats:
    calls: int = 0
    items: int = 0
    largest: int = 0
    seconds: float = 0.0
    recent: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "items": self.items, "largest_batch": self.largest,
                "mean_batch": round(self.items / self.calls, 2) if self.calls else 0.0,
                "busy_seconds": round(self.seconds, 3)}


class MicroBatcher:
    """``await batcher(items)`` -> ``fn(all items of the batch)`` sliced back to these items.

    ``fn`` takes a list and returns an array (or list) with one row per item.
    """

    SETTLE_TURNS = 2  # inline: quiet turns of the event loop before a call (4 measured no better than 2)

    def __init__(self, fn: Callable[[list[Any]], Any], max_batch: int = 256, max_wait_ms: float = 0.0,
                 threaded: bool = False) -> None:
        self.fn, self.max_batch, self.max_wait = fn, max_batch, max_wait_ms / 1000
        self.threaded = threaded
        self.queue: asyncio.Queue[_Job] | None = None
        self.worker: asyncio.Task[None] | None = None
        self.stats = BatchStats()

    async def __call__(self, items: Sequence[Any]) -> Any:
        if self.queue is None:
            self.queue = asyncio.Queue()
            self.worker = asyncio.get_running_loop().create_task(self._run())
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self.queue.put(_Job(items, future))
        return await future

    async def _run(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            size = len(jobs[0].items)
            if not self.threaded:
                # requests already read from their sockets are still on their way through the framework (a
                # few awaits each): yield to them until a couple of turns of the loop bring no new one
                quiet = 0
                while quiet < self.SETTLE_TURNS and self.queue.qsize() < self.max_batch:
                    before = self.queue.qsize()
                    await asyncio.sleep(0)
                    quiet = quiet + 1 if self.queue.qsize() == before else 0
            # everything that queued up while the previous batch ran joins this one at once
            while size < self.max_batch and not self.queue.empty():
                jobs.append(self.queue.get_nowait())
                size += len(jobs[-1].items)
            deadline = loop.time() + self.max_wait
            while size < self.max_batch and self.max_wait > 0:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), timeout)
                except TimeoutError:
                    break
                jobs.append(job)
                size += len(job.items)
            items = [x for job in jobs for x in job.items]
            t0 = time.perf_counter()
            try:
                out = await asyncio.to_thread(self.fn, items) if self.threaded else self.fn(items)
            except Exception as exc:  # every waiting request gets the error, the worker lives on
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.stats.calls += 1
            self.stats.items += len(items)
            self.stats.largest = max(self.stats.largest, len(items))
            self.stats.seconds += time.perf_counter() - t0
            start = 0
            for job in jobs:
                end = start + len(job.items)
                if not job.future.done():
                    job.future.set_result(out[start:end] if isinstance(out, np.ndarray | list) else out)
                start = end

    async def close(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.worker
            self.worker, self.queue = None, None
