"""AppPlan -> serve.Application: one model deployment per model plus one OpenAI ingress bound to their handles, or,
for an app of one model, that model's deployment answering HTTP itself.

The only place that binds deployments (and, with `runtime.cluster`, one of the few that import Ray). Nothing
starts until the application is deployed. Each deployment's options come from its own plan; the ingress gets the
model handles and one `ModelCard` per model, never the whole plan.
With a separate ingress a token crosses two hops: model replica -> ingress (a streamed handle item, ~1.2 ms here)
-> HTTP proxy -> client; that ingress lets one HTTP endpoint serve several text models and scale on its own. An app
of one text model skips it (`ModelIngress`): replica -> HTTP proxy -> client, with any embedding models beside it
reached through their handles.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import threading
import time
from collections.abc import AsyncIterator

from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException
from ray.serve.handle import DeploymentHandle

from runtime.engines.base import EmbeddingRequest, EmbeddingResult, GenerationRequest, StreamError
from runtime.export import runtime_env_vars
from runtime.model_api import ModelCard, ModelClient, ModelHealth, StreamItem
from runtime.model_server import ModelServer
from runtime.openai.auth import Authenticator, KeyGrant, KeyRing
from runtime.openai.ingress import create_app
from runtime.openai.metrics import ServingMetrics, merge_expositions
from runtime.openai.quotas import Decision, Quotas
from runtime.openai.service import Admission
from runtime.openai.stored import StoredCompletions
from runtime.plan import HEALTH_PROBE_HEADROOM, Access, AppPlan, DeploymentPlan
from runtime.records import CompletionRecord, Recording

logger = logging.getLogger("aana.app")

HEALTH_PING_TIMEOUT_S = 3.0


def serve_logging() -> None:
    """aana's own log lines into the replica's Serve log file (with Serve's format and request id), where `aana
    logs` reads them; otherwise they land, without timestamps, in the worker's stderr file."""
    aana, serve_logger = logging.getLogger("aana"), logging.getLogger("ray.serve")
    if serve_logger.handlers:
        aana.handlers, aana.propagate = list(serve_logger.handlers), False
        aana.setLevel(logging.INFO)


class ModelDeployment(ModelServer):
    """`ModelServer` as Ray Serve runs it: started in the constructor, shut down when Serve removes the replica."""

    async def __init__(self, plan: DeploymentPlan):
        serve_logging()
        with StartupSteps(plan.model_id) as steps:
            ModelServer.__init__(self, plan, on_step=steps)
            await self.start()

    async def __del__(self) -> None:
        # Serve awaits this on graceful shutdown: the engine's processes and memory go with the replica.
        await self.shutdown()


class RemoteModel:
    """A `ModelClient` over a model deployment's Ray Serve handle."""

    def __init__(self, model_id: str, handle: DeploymentHandle):
        self.model_id = model_id
        self.streaming = handle.options(stream=True)
        self.handle = handle

    async def generate(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        responses = self.streaming.generate.remote(request)
        finished = False
        try:
            async for item in responses:
                yield item
            finished = True
        except (RayError, RayServeException) as exc:
            finished = True
            # Ray's text names actors, pids and node IPs: the operator's log gets it, the client a plain reason.
            logger.warning("request %s to %s failed in Ray: %s", request.request_id, self.model_id, exc)
            yield StreamError(
                "unavailable",
                f"model {self.model_id}: the replica serving this request stopped; Ray restarts it, retry",
            )
        finally:
            if not finished:
                responses.cancel()  # the client went away: stop the replica's generation too

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult | StreamError:
        response = self.handle.embed.remote(request)
        try:
            return await response
        except asyncio.CancelledError:
            response.cancel()  # the client went away: the replica need not finish
            raise
        except (RayError, RayServeException) as exc:
            logger.warning("request %s to %s failed in Ray: %s", request.request_id, self.model_id, exc)
            return StreamError(
                "unavailable",
                f"model {self.model_id}: the replica serving this request stopped; Ray restarts it, retry",
            )

    async def health(self) -> ModelHealth:
        try:
            return await asyncio.wait_for(self.handle.health.remote(), HEALTH_PING_TIMEOUT_S)
        except asyncio.TimeoutError:
            return ModelHealth(problem=f"no replica answered within {HEALTH_PING_TIMEOUT_S:.0f} s")
        except (RayError, RayServeException) as exc:
            logger.warning("health ping to %s failed in Ray: %s", self.model_id, exc)
            return ModelHealth(problem=f"no replica answers ({type(exc).__name__})")


# The drain signal and each ingress replica's report live in Ray's GCS key-value store, which every process of the
# cluster reaches: a Serve handle call would reach one ingress replica only.
KV_NAMESPACE = "aana"
REPORT_INTERVAL_S = 0.2
METRICS_INTERVAL_S = 1.0  # a scrape sees other replicas' counts at most this old (Prometheus scrapes every 15 s or so)
METRICS_STALE_S = 10.0  # a replica silent this long has stopped: its gauges no longer count, its totals do


def kv_prefix(app: str) -> bytes:
    """Every key an app keeps in the store starts with this (a new deployment clears them all)."""
    return f"{app}/".encode()


def front_key(app: str) -> bytes:
    return kv_prefix(app) + b"front"


def metrics_prefix(app: str) -> bytes:
    return kv_prefix(app) + b"metrics/"


def drain_key(app: str) -> bytes:
    return kv_prefix(app) + b"draining"


def report_prefix(app: str) -> bytes:
    return kv_prefix(app) + b"ingress/"


def steps_prefix(app: str) -> bytes:
    return kv_prefix(app) + b"steps/"


class StartupSteps:
    """A starting replica's current step (from its engine: "loading the weights ...") in the GCS store, where
    `aana up` reads it (`runtime.cluster.read_progress`) to show more than Serve's UPDATING while a model loads.
    Called from the engine's loading thread; a store that does not answer costs a log line, never the start. Used as
    a context manager around the start: the step is cleared however the start ends."""

    def __init__(self, model_id: str):
        context = serve.get_replica_context()
        self.key = steps_prefix(context.app_name) + f"{model_id}/{context.replica_id.unique_id}".encode()

    def __enter__(self) -> StartupSteps:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.done()

    def __call__(self, message: str) -> None:
        from ray.experimental import internal_kv

        try:
            step = json.dumps({"step": message, "at": time.time()})
            internal_kv._internal_kv_put(self.key, step, namespace=KV_NAMESPACE)
        except (RayError, OSError) as exc:
            logger.warning("could not report start-up step %r: %s", message, exc)

    def done(self) -> None:
        from ray.experimental import internal_kv

        try:
            internal_kv._internal_kv_del(self.key, namespace=KV_NAMESPACE)
        except (RayError, OSError) as exc:
            logger.warning("could not clear the start-up step: %s", exc)


class DrainWatch:
    """One front replica's side of a drain and of the app's metrics: a thread that reads the app's drain flag (set by
    `aana down` or a stopping `aana up`) and reports this replica's requests in flight, every REPORT_INTERVAL_S, and
    publishes this replica's metrics every METRICS_INTERVAL_S, so a scrape that reaches any replica sums them all."""

    def __init__(self, app: str, admission: Admission, metrics: ServingMetrics | None = None):
        self.app = app
        self.admission = admission
        self.metrics = metrics
        replica = serve.get_replica_context().replica_id.unique_id.encode()
        self.key = report_prefix(app) + replica
        self.metrics_key = metrics_prefix(app) + replica
        self.stopped = threading.Event()
        threading.Thread(target=self._run, name="aana-drain-watch", daemon=True).start()

    def _run(self) -> None:
        from ray.experimental import internal_kv

        published = 0.0
        while not self.stopped.wait(REPORT_INTERVAL_S):
            try:
                if internal_kv._internal_kv_get(drain_key(self.app), namespace=KV_NAMESPACE):
                    self.admission.draining = True
                report = {"draining": self.admission.draining, "in_flight": self.admission.in_flight, "at": time.time()}
                internal_kv._internal_kv_put(self.key, json.dumps(report), namespace=KV_NAMESPACE)
                if self.metrics is not None and time.monotonic() - published >= METRICS_INTERVAL_S:
                    self._publish_metrics()
                    published = time.monotonic()
            except (RayError, OSError) as exc:  # the GCS is restarting or gone: try again next round
                logger.warning("drain watch of %s: %s", self.app, exc)

    def _publish_metrics(self) -> None:
        from ray.experimental import internal_kv

        snapshot = json.dumps({"at": time.time(), "text": self.metrics.exposition()})
        internal_kv._internal_kv_put(self.metrics_key, snapshot, namespace=KV_NAMESPACE)

    async def scrape(self) -> str:
        """The app's metrics: this replica's live ones plus every other front replica's last published ones."""
        others = await asyncio.to_thread(self._others)
        live = [self.metrics.exposition()] if self.metrics is not None else []
        fresh = [s["text"] for s in others if time.time() - s["at"] <= METRICS_STALE_S]
        stale = [s["text"] for s in others if time.time() - s["at"] > METRICS_STALE_S]
        return merge_expositions(live + fresh, stale)

    def _others(self) -> list[dict]:
        from ray.experimental import internal_kv

        snapshots = []
        try:
            for key in internal_kv._internal_kv_list(metrics_prefix(self.app), namespace=KV_NAMESPACE):
                if key != self.metrics_key and (raw := internal_kv._internal_kv_get(key, namespace=KV_NAMESPACE)):
                    snapshots.append(json.loads(raw))
        except (RayError, OSError) as exc:  # this replica's own numbers are still worth a scrape
            logger.warning("could not read the other replicas' metrics: %s", exc)
        return snapshots

    def stop(self) -> None:
        self.stopped.set()


KEYS_REFRESH_S = 2.0  # a revoked key stops working on every front replica within this (plus one database read)
KEYS_FIRST_READ_TRIES = 4


class KeyWatch:
    """The app's API keys as the database holds them, re-read every KEYS_REFRESH_S by a thread, so the hot path
    asks no database and a revocation reaches every replica within seconds. Without a database there are no keys.
    A read that fails keeps the keys of the last one that worked; until one has worked, only the spec's api_key gets
    in (503 for the rest), never everyone."""

    def __init__(self, database_url: str | None):
        self.database_url = database_url
        self.ring = KeyRing(loaded=database_url is None)
        self.stopped = threading.Event()
        if database_url is not None:
            for attempt in range(KEYS_FIRST_READ_TRIES):  # the replica starts only once it knows its keys, or gives up
                if self._refresh():
                    break
                time.sleep(0.5 * (attempt + 1))
            threading.Thread(target=self._run, name="aana-key-watch", daemon=True).start()

    def _run(self) -> None:
        while not self.stopped.wait(KEYS_REFRESH_S):
            self._refresh()

    def _refresh(self) -> bool:
        from runtime.store.errors import StoreError
        from runtime.store.keys import list_keys

        try:
            keys = list_keys(self.database_url)
        except StoreError as exc:
            logger.warning("could not read the API keys (keeping the last ones read, if any): %s", exc)
            return False
        self.ring.replace(KeyGrant.of(key) for key in keys)
        return True

    def stop(self) -> None:
        self.stopped.set()


def quota_actor_name(app: str) -> str:
    return f"aana-quotas-{app}"


class QuotaKeeper:
    """`Quotas` in one Ray actor per app, which every front replica calls: keys' limits hold across replicas. Its
    counters live in memory (a minute's window is all they need); if the actor is lost, a new one starts clean."""

    def __init__(self) -> None:
        self.quotas = Quotas()

    def take(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int) -> Decision:
        return self.quotas.take(key_id, rpm, tpm, tokens)

    def settle(self, key_id: str, tpm: int | None, reserved: int, used: int) -> None:
        self.quotas.settle(key_id, tpm, reserved, used)


class RemoteQuotas:
    """The front replicas' side of `QuotaKeeper`: the actor is found, or started, on the first limited request (an
    app whose keys have no limits never starts it)."""

    def __init__(self, app: str):
        self.app = app
        self._actor = None

    def _keeper(self):
        import ray

        if self._actor is None:
            self._actor = (
                ray.remote(QuotaKeeper)
                .options(
                    name=quota_actor_name(self.app),
                    namespace=KV_NAMESPACE,
                    get_if_exists=True,
                    lifetime="detached",
                    num_cpus=0,
                )
                .remote()
            )
        return self._actor

    async def take(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int) -> Decision:
        return await self._keeper().take.remote(key_id, rpm, tpm, tokens)

    async def settle(self, key_id: str, tpm: int | None, reserved: int, used: int) -> None:
        await self._keeper().settle.remote(key_id, tpm, reserved, used)


class _HTTPFront:
    """What every replica that answers the app's HTTP holds: the OpenAI router over its models, admission and the
    drain watch, and the request recorder. Shared by the separate ingress and a model that serves HTTP itself."""

    def _open_front(
        self,
        app_name: str,
        cards: tuple[ModelCard, ...],
        models: dict[str, ModelClient],
        access: Access,
        recording: Recording | None,
        replicas: int,
        max_body_bytes: int,
        allowed_hosts: tuple[str, ...],
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.allowed_hosts = allowed_hosts
        self.cards = cards
        self.models = models
        self.access = access
        self.keys = KeyWatch(recording.database_url if recording else None)
        self.quotas = RemoteQuotas(app_name)
        self.stored = None
        if access.store_completions and recording is not None:
            self.stored = StoredCompletions(recording.database_url, access.store_retention_days)
        self.replicas = replicas
        self.admission = Admission()
        self.metrics = ServingMetrics()
        self.drain_watch = DrainWatch(app_name, self.admission, self.metrics)
        self.recorder = None
        if recording is not None:
            from runtime.store.recorder import RequestRecorder

            self.recorder = RequestRecorder(recording.database_url, recording.run_id)
            # A worker stopped by SIGTERM outside Serve's graceful path still exits through the interpreter's
            # exit handlers: write what is queued then too (close is idempotent).
            atexit.register(self.recorder.close, 5)

    def __serve_build_asgi_app__(self):
        on_record = self._record if self.recorder else None
        return create_app(
            self.models,
            self.cards,
            self.access.api_key,
            self.admission,
            on_record,
            self.replicas,
            self.max_body_bytes,
            self.allowed_hosts,
            self.metrics,
            self.drain_watch.scrape,
            Authenticator(self.access.api_key, self.keys.ring, self.access.auth_mode),
            self.quotas,
            self.stored,
        )

    def _record(self, record: CompletionRecord) -> None:
        self.recorder.record(record)

    def _close_front(self) -> None:
        # Serve calls __del__ on graceful shutdown (SIGTERM included): write what is still queued. A kill -9 loses at
        # most the rows of the recorder's last flush interval (1 s).
        self.drain_watch.stop()
        self.keys.stop()
        if self.recorder is not None:
            self.recorder.close(timeout=10)


@serve.ingress()
class OpenAIIngress(_HTTPFront):
    """The separate ingress of an app of several models: one HTTP endpoint over the models' handles."""

    def __init__(
        self,
        app_name: str,
        cards: tuple[ModelCard, ...],
        handles: dict[str, DeploymentHandle],
        access: Access,
        recording: Recording | None,
        replicas: int,
        max_body_bytes: int,
        allowed_hosts: tuple[str, ...],
    ):
        serve_logging()
        models = {card.id: RemoteModel(card.id, handles[card.id]) for card in cards}
        self._open_front(app_name, cards, models, access, recording, replicas, max_body_bytes, allowed_hosts)

    def __del__(self):
        self._close_front()


@serve.ingress()
class ModelIngress(_HTTPFront):
    """The app's one text model answering HTTP itself: each replica calls its own `ModelServer` in-process, so a
    token crosses one Ray hop (replica -> HTTP proxy) instead of two; other models of the app (embedding models)
    are reached through their handles."""

    async def __init__(
        self,
        plan: DeploymentPlan,
        app_name: str,
        access: Access,
        recording: Recording | None,
        max_body_bytes: int,
        allowed_hosts: tuple[str, ...],
        cards: tuple[ModelCard, ...] = (),
        handles: dict[str, DeploymentHandle] | None = None,
    ):
        serve_logging()
        with StartupSteps(plan.model_id) as steps:
            self.server = ModelServer(plan, on_step=steps)
            await self.server.start()
        models: dict[str, ModelClient] = {plan.model_id: self.server}
        models |= {name: RemoteModel(name, handle) for name, handle in (handles or {}).items()}
        self._open_front(app_name, cards or (plan.card(),), models, access, recording, plan.max_replicas,
                         max_body_bytes, allowed_hosts)  # fmt: skip

    async def check_health(self) -> None:
        await self.server.check_health()

    async def __del__(self) -> None:
        self._close_front()
        await self.server.shutdown()


def _runtime_env() -> dict:
    return {"env_vars": runtime_env_vars()}


def _model_options(d: DeploymentPlan) -> dict:
    options = d.deployment_options()
    options["ray_actor_options"] = options["ray_actor_options"] | {"runtime_env": _runtime_env()}
    return options


def build_app(plan: AppPlan, recording: Recording | None = None) -> serve.Application:
    handles = {}
    for d in plan.deployments:
        if d.model_id != plan.front:
            handles[d.model_id] = serve.deployment(ModelDeployment).options(**_model_options(d)).bind(d)
    if plan.front is not None:
        [d] = [d for d in plan.deployments if d.model_id == plan.front]
        options = _model_options(d)
        # Its replicas admit every model's requests (the others' through their handles): room for all of them.
        options["max_ongoing_requests"] = sum(c.limits.capacity for c in plan.cards) + HEALTH_PROBE_HEADROOM
        model = serve.deployment(ModelIngress).options(**options)
        return model.bind(d, plan.app_name, plan.access(), recording, plan.max_body_bytes, plan.allowed_hosts,
                          plan.cards, handles)  # fmt: skip
    ingress = serve.deployment(OpenAIIngress).options(**plan.ingress_options())
    return ingress.bind(
        plan.app_name,
        plan.cards,
        handles,
        plan.access(),
        recording,
        plan.ingress_replicas or 1,
        plan.max_body_bytes,
        plan.allowed_hosts,
    )
