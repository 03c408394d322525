"""AppPlan -> serve.Application: one ModelServer deployment per model plus one OpenAI ingress bound to their handles.

The only place that binds deployments. Nothing starts until the launcher deploys the returned application.
A token crosses two hops: model replica -> ingress (a streamed handle item, ~1.2 ms here) -> HTTP proxy -> client.
The ingress is kept separate from the models so one HTTP endpoint serves every model and scales on its own.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Mapping

from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException
from ray.serve.handle import DeploymentHandle

from runtime.deployment import ModelServer
from runtime.engines.base import GenerationRequest, StreamError
from runtime.openai.ingress import Admission, ModelHealth, create_app
from runtime.openai.metering import CompletionRecord
from runtime.openai.streaming import StreamItem
from runtime.plan import INGRESS_NAME, AppPlan, DeploymentPlan

HEALTH_PING_TIMEOUT_S = 3.0
# Passed to replicas so that a cluster's workers see the same offline/cache settings as the driver.
_FORWARDED_ENV = (
    "HF_HUB_OFFLINE", "HF_HOME", "TRANSFORMERS_OFFLINE", "AANA_CACHE_DIR",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP",
)  # fmt: skip


class RayBackend:
    """A ModelBackend over Ray Serve deployment handles."""

    def __init__(self, handles: Mapping[str, DeploymentHandle]):
        self.handles = {name: handle.options(stream=True) for name, handle in handles.items()}
        self.pings = dict(handles)

    async def stream(self, model_id: str, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        responses = self.handles[model_id].generate.remote(request)
        finished = False
        try:
            async for item in responses:
                yield item
            finished = True
        except (RayError, RayServeException) as exc:
            finished = True
            yield StreamError("unavailable", f"model {model_id} is unavailable: {type(exc).__name__}: {exc}")
        finally:
            if not finished:
                responses.cancel()  # the client went away: stop the replica's generation too

    async def health(self) -> dict[str, ModelHealth]:
        async def ping(name: str, handle: DeploymentHandle) -> ModelHealth:
            try:
                load = await asyncio.wait_for(handle.ready.remote(), HEALTH_PING_TIMEOUT_S)
            except asyncio.TimeoutError:
                return ModelHealth(problem=f"no replica answered within {HEALTH_PING_TIMEOUT_S:.0f} s")
            except (RayError, RayServeException) as exc:
                return ModelHealth(problem=f"{type(exc).__name__}: {exc}")
            return ModelHealth(load=load or {})

        results = await asyncio.gather(*(ping(n, h) for n, h in self.pings.items()))
        return dict(zip(self.pings, results))


@serve.ingress()
class OpenAIIngress:
    def __init__(self, plan: AppPlan, handles: dict[str, DeploymentHandle]):
        self.plan = plan
        self.backend = RayBackend(handles)
        self.admission = Admission()
        self.recorder = None
        if plan.database_url:
            from runtime.store.recorder import RequestRecorder

            self.recorder = RequestRecorder(plan.database_url, plan.run_id)

    def __serve_build_asgi_app__(self):
        on_record = self._record if self.recorder else None
        return create_app(self.backend, self.plan.deployments, self.plan.api_key, self.admission, on_record)

    def _record(self, record: CompletionRecord) -> None:
        from runtime.store.recorder import RequestRecord

        self.recorder.record(
            RequestRecord(
                id=record.request_id or f"rejected-{uuid.uuid4().hex}", model=record.model,
                status_code=record.status_code, latency_ms=record.latency_ms, prompt_tokens=record.prompt_tokens,
                completion_tokens=record.completion_tokens, finish_reason=record.finish_reason,
                ttft_ms=record.ttft_ms, stream=record.stream, created_at=record.created_at,
                deployment_id=self.plan.run_id,
            )
        )  # fmt: skip

    def __del__(self):
        # Serve calls this on graceful shutdown: write what is still queued.
        if self.recorder is not None:
            self.recorder.close(timeout=10)

    async def drain(self) -> int:
        """Stop admitting requests (503 from now on); return how many are still in flight. Called by aana down."""
        self.admission.draining = True
        return self.admission.in_flight

    async def in_flight(self) -> int:
        return self.admission.in_flight


def _runtime_env() -> dict:
    from runtime.launcher import SERVE_ENV_DEFAULTS

    env = SERVE_ENV_DEFAULTS | {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
    return {"env_vars": env} if env else {}


def model_deployment(plan: DeploymentPlan):
    options = dict(plan.ray_actor_options)
    if runtime_env := _runtime_env():
        options["runtime_env"] = runtime_env
    return ModelServer.options(
        name=plan.model_id,
        num_replicas=plan.num_replicas,
        max_ongoing_requests=plan.max_ongoing_requests,
        ray_actor_options=options,
        health_check_period_s=10,
        health_check_timeout_s=30,
        graceful_shutdown_timeout_s=5,
    ).bind(plan)


def build_app(plan: AppPlan) -> serve.Application:
    handles = {d.model_id: model_deployment(d) for d in plan.deployments}
    ingress = serve.deployment(OpenAIIngress).options(
        name=INGRESS_NAME,
        num_replicas=1,
        max_ongoing_requests=1000,
        ray_actor_options={"num_cpus": plan.ingress_num_cpus},
    )
    return ingress.bind(plan, handles)
