"""The model replica on Ray Serve: owns one engine, streams typed items, and reports the engine's health to Ray."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ray import serve

from runtime.engines.base import GenerationRequest
from runtime.openai.streaming import StreamItem
from runtime.plan import DeploymentPlan
from runtime.serving import ModelRunner


@serve.deployment
class ModelServer:
    async def __init__(self, plan: DeploymentPlan):
        self.runner = ModelRunner(plan)
        await self.runner.start()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        async for item in self.runner.stream(request):
            yield item

    async def ready(self) -> dict[str, int]:
        """Answers once the replica is up, with the engine's load; the ingress's /health pings it."""
        return self.runner.engine.load()

    async def check_health(self) -> None:
        # Ray calls this periodically; raising marks the replica unhealthy and Ray replaces it.
        await self.runner.engine.check_health()
