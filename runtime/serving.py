"""One model behind the engine contract, as a stream of `Delta | StreamError`, plus the in-process backend.

`ModelRunner` is what a Ray Serve replica hosts; `LocalBackend` runs the same runners in-process for tests and for
the HTTP layer's unit tests. Errors become in-band `StreamError`s here, the replica boundary, so nothing crosses a
process boundary as a pickled exception and no client ever sees a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

from runtime.engines.base import EngineError, GenerationRequest, StreamError
from runtime.engines.registry import load_engine_class
from runtime.openai.ingress import ModelHealth
from runtime.openai.streaming import StreamItem
from runtime.plan import DeploymentPlan

logger = logging.getLogger("aana.model")


class ModelRunner:
    def __init__(self, plan: DeploymentPlan):
        self.plan = plan
        self.engine = load_engine_class(plan.engine)(plan)

    async def start(self) -> None:
        await self.engine.start()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        generator = self.engine.generate(request)
        try:
            async for delta in generator:
                yield delta
        except EngineError as exc:
            yield exc.as_stream_error()
        except Exception as exc:  # the replica boundary: log for the operator, tell the client what failed
            logger.exception("generation failed for %s (request %s)", self.plan.model_id, request.request_id)
            yield StreamError("internal", f"model {self.plan.model_id} failed ({type(exc).__name__}); see the server log")
        finally:
            await generator.aclose()


class LocalBackend:
    """A ModelBackend over in-process runners (no Ray)."""

    def __init__(self, runners: Mapping[str, ModelRunner]):
        self.runners = dict(runners)

    def stream(self, model_id: str, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        return self.runners[model_id].stream(request)

    async def health(self) -> dict[str, ModelHealth]:
        out: dict[str, ModelHealth] = {}
        for model_id, runner in self.runners.items():
            try:
                await runner.engine.check_health()
                out[model_id] = ModelHealth(load=runner.engine.load())
            except RuntimeError as exc:
                out[model_id] = ModelHealth(problem=str(exc))
        return out
