"""One model replica as a plain class: it owns one engine from start to shutdown, the error boundary, health and load.

`runtime.app` turns this class into a Ray Serve deployment at build time; tests run the very same class in-process
(it satisfies `ModelClient`, so the ingress can call it directly). Errors become in-band `StreamError`s here, at the
replica boundary, so nothing crosses a process boundary as a pickled exception and no client ever sees a traceback.

The replica's stream is coalesced (`coalesce`): the first item goes out at once, and whatever the engine produced
while the previous item was on its way is merged into one delta per choice, so a consumer that lags (a Ray hop, a
slow socket) gets fewer, larger items instead of falling further behind. There is no timer: a consumer that keeps
up gets every token as it comes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace

from runtime.engines.base import (
    Delta,
    EmbeddingRequest,
    EmbeddingResult,
    Engine,
    EngineError,
    GenerationRequest,
    StreamError,
)
from runtime.engines.registry import load_engine_class
from runtime.model_api import ModelHealth, StreamItem
from runtime.plan import DeploymentPlan

logger = logging.getLogger("aana.model")


class ModelServer:
    """Serves one `DeploymentPlan`. `engine_class` defaults to the registry's engine for the plan (tests inject one)."""

    def __init__(
        self,
        plan: DeploymentPlan,
        engine_class: type[Engine] | None = None,
        on_step: Callable[[str], None] | None = None,
    ):
        self.plan = plan
        self.engine: Engine = (engine_class or load_engine_class(plan.engine))(plan)
        if on_step is not None:
            self.engine.on_step = on_step  # start-up steps, e.g. to `StartupSteps` in a Serve replica
        self._stopped = False
        # At most max_ongoing_requests generate at once; the rest wait here, in arrival order. Ray lets more than
        # that reach the replica (see DeploymentPlan.deployment_options) so that a health probe never queues
        # behind generation: busy is still ready.
        self._slots = asyncio.Semaphore(plan.max_ongoing_requests)
        self.queued = 0

    async def start(self) -> None:
        """Load the model; raises with the engine's reason when it cannot."""
        await self.engine.start()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        self.queued += 1
        arrived = time.perf_counter()
        try:
            await self._slots.acquire()
        finally:
            self.queued -= 1
        queued_s: float | None = time.perf_counter() - arrived
        generator = coalesce(self.engine.generate(request))
        try:
            async for delta in generator:
                if queued_s is not None:
                    delta, queued_s = replace(delta, queued_s=queued_s), None
                yield delta
        except EngineError as exc:
            yield exc.as_stream_error()
        except Exception as exc:  # the replica boundary: log for the operator, tell the client what failed
            logger.exception("generation failed for %s (request %s)", self.plan.model_id, request.request_id)
            yield StreamError(
                "internal", f"model {self.plan.model_id} failed ({type(exc).__name__}); see the server log"
            )
        finally:
            self._slots.release()
            await generator.aclose()

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult | StreamError:
        """The engine's vectors for one request, or its failure as data (the same boundary as `generate`)."""
        self.queued += 1
        try:
            await self._slots.acquire()
        finally:
            self.queued -= 1
        try:
            return await self.engine.embed(request)
        except EngineError as exc:
            return exc.as_stream_error()
        except Exception as exc:  # the replica boundary
            logger.exception("embedding failed for %s (request %s)", self.plan.model_id, request.request_id)
            return StreamError(
                "internal", f"model {self.plan.model_id} failed ({type(exc).__name__}); see the server log"
            )
        finally:
            self._slots.release()

    async def check_health(self) -> None:
        """Raise when the engine can no longer serve (Ray then replaces the replica)."""
        await self.engine.check_health()

    async def health(self) -> ModelHealth:
        """Ready with the engine's load, or the reason it cannot serve."""
        try:
            await self.engine.check_health()
        except RuntimeError as exc:
            return ModelHealth(problem=str(exc))
        return ModelHealth(load=self.engine.load() | {"queued": self.queued})

    async def shutdown(self) -> None:
        """Release the engine (its processes, memory, device). Safe to call twice."""
        if not self._stopped:
            self._stopped = True
            await self.engine.shutdown()


# How many engine items may wait for a lagging consumer before the engine's stream is paused (the engine then holds
# or merges them itself, as vLLM's output collector does).
MAX_PENDING_ITEMS = 1024


async def coalesce(items: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    """`items`, with what piled up while the consumer was away merged into one delta per choice. An exception from
    `items` is raised after the items that came before it; closing this stream closes `items`."""
    pending: list[Delta] = []
    arrived = asyncio.Event()
    room = asyncio.Event()
    ended: list[BaseException | None] = []  # set once: None, or what `items` raised

    async def pump() -> None:
        try:
            async for item in items:
                pending.append(item)
                arrived.set()
                if len(pending) >= MAX_PENDING_ITEMS:
                    room.clear()
                    await room.wait()
                # Let a waiting consumer take this item before the next one is produced: no batching unless the
                # consumer is busy.
                await asyncio.sleep(0)
            ended.append(None)
        except Exception as exc:  # handed to the consumer, in order
            ended.append(exc)
        finally:
            arrived.set()

    task = asyncio.create_task(pump())
    try:
        while True:
            await arrived.wait()
            arrived.clear()
            batch, pending[:] = pending[:], []
            room.set()
            for item in merge(batch):
                yield item
            if ended and not pending:
                break
        if ended[0] is not None:
            raise ended[0]
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)  # the engine's own cleanup has run when this returns
        await items.aclose()


def merge(batch: Sequence[Delta]) -> list[Delta]:
    """Consecutive deltas of a choice as one (text and logprobs joined, the latest counts and finish reason); choices
    in the order they first appear."""
    merged: dict[int, Delta] = {}
    for delta in batch:
        before = merged.get(delta.index)
        merged[delta.index] = (
            delta
            if before is None
            else replace(delta, text=before.text + delta.text, logprobs=before.logprobs + delta.logprobs)
        )
    return list(merged.values())
