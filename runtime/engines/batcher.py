"""Gathering the inputs of concurrent requests into batches, for engines whose model takes a whole batch in one call
(an embedding model's forward pass).

One worker task makes one call at a time, in the executor it is given. While a call runs, new requests queue; the
next call takes the queued inputs up to `max_batch_size`, across requests, in queue order (each request's own inputs
in the order its `key` gives). No timer: a lone request goes at once. A cancelled caller's inputs are skipped, and
its results dropped. Standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from runtime.engines.base import EngineError

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Job:
    """One request's inputs in the queue, and its results as calls return them."""

    inputs: Sequence[Any]
    future: asyncio.Future[list[Any]]
    results: list[Any]
    left: int


class Batcher:
    """Gathers the inputs of concurrent requests into calls of `run` (a forward pass), one call at a time, in
    `executor`. `run` takes a list of inputs and returns one result per input, in order. Made inside the event loop
    that serves the requests; `passes` counts the calls made."""

    def __init__(self, run: Callable[[list[Any]], list[Any]], max_batch_size: int, executor: Executor):
        self._run = run
        self._max_batch_size = max_batch_size
        self._executor = executor
        self._queue: deque[tuple[_Job, int]] = deque()
        self._current: list[tuple[_Job, int]] = []
        self._wake = asyncio.Event()
        self.passes = 0
        self._task = asyncio.get_running_loop().create_task(self._work(), name="aana-batcher")
        self._task.add_done_callback(self._stopped)

    @property
    def running(self) -> int:
        return len(self._current)

    @property
    def waiting(self) -> int:
        return sum(not job.future.done() for job, _ in self._queue)

    def failure(self) -> str | None:
        """Why the worker stopped; None while it runs."""
        if not self._task.done():
            return None
        if self._task.cancelled():
            return "it was stopped"
        return repr(self._task.exception())

    async def submit(self, inputs: Sequence[Any], key: Callable[[Any], int]) -> list[Any]:
        """Queue one request's inputs (in the order of `key`) and wait for their results (in input order)."""
        job = _Job(inputs, asyncio.get_running_loop().create_future(), [None] * len(inputs), len(inputs))
        self._queue.extend((job, index) for index in sorted(range(len(inputs)), key=lambda i: key(inputs[i])))
        self._wake.set()
        # A cancelled caller cancels its future: the worker then skips its inputs and drops its results.
        return await job.future

    async def stop(self, error: EngineError) -> None:
        """Fail every request still queued or in a call with `error`, and stop the worker."""
        self._fail(_jobs([*self._current, *self._queue]), error)
        self._queue.clear()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._take():
                await self._pass(loop)

    def _take(self) -> bool:
        """Move the next call's inputs from the queue to `_current`; False when nothing waits."""
        batch: list[tuple[_Job, int]] = []
        while self._queue and len(batch) < self._max_batch_size:
            job, index = self._queue.popleft()
            if not job.future.done():  # done: cancelled by its caller, or failed in an earlier pass
                batch.append((job, index))
        self._current = batch
        return bool(batch)

    async def _pass(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._current
        try:
            results = await loop.run_in_executor(self._executor, self._run, [job.inputs[i] for job, i in batch])
            for (job, index), result in zip(batch, results, strict=True):
                job.results[index] = result
                job.left -= 1
                if job.left == 0 and not job.future.done():
                    job.future.set_result(job.results)
        except Exception as exc:  # the model failed on these inputs: their requests get the error, the rest go on
            self._fail(_jobs(batch), exc)
        finally:
            self._current = []
            self.passes += 1

    def _fail(self, jobs: Iterable[_Job], error: BaseException) -> None:
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(error)

    def _stopped(self, task: asyncio.Task[None]) -> None:
        """A worker that died of a bug fails whatever waits, rather than leaving it waiting forever."""
        if not task.cancelled() and task.exception() is not None:
            log.error("the batching worker stopped", exc_info=task.exception())
            self._fail(
                _jobs([*self._current, *self._queue]),
                EngineError("unavailable", "this replica's model is unusable; it is being replaced"),
            )


def _jobs(entries: Iterable[tuple[_Job, int]]) -> list[_Job]:
    return list({id(job): job for job, _ in entries}.values())
