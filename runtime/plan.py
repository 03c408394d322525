"""AppSpec -> AppPlan: the typed, picklable description of what to deploy. Pure: no Ray, no engine libraries.

The plan resolves everything that depends on where the spec file lives (relative paths, template files) so that a
replica on another node needs nothing but its `DeploymentPlan`. Each plan computes its own Ray Serve deployment
options, and each model's `ModelCard` is all the ingress gets. Problems found here are SpecErrors that name the key
path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from runtime.engines.options import EngineOptions
from runtime.engines.registry import ENGINES
from runtime.model_api import ModelCard, RequestLimits
from runtime.sources import ModelSource
from runtime.spec import DEFAULT_MAX_BODY_MB, AppSpec, AutoscalingSpec, Problem, SamplingSpec, SpecError, load_spec

BUNDLED_TEMPLATES = ("llama2", "chatml", "hermes")
INGRESS_NUM_CPUS = 0.1
INGRESS_NAME = "OpenAIIngress"  # the Ray Serve deployment name of the HTTP ingress
MULTI_INGRESS_MIN_CPUS = 4
MIB = 1 << 20
DEFAULT_MAX_BODY_BYTES = int(DEFAULT_MAX_BODY_MB * MIB)
ANY_HOST = ("*",)  # allowed_hosts that answers every Host header
INGRESS_MAX_ONGOING_REQUESTS = 1000  # the ingress only relays; the models' own limits are what bound the work
# Ray's periodic replica health check: a replica whose engine fails it is replaced.
HEALTH_CHECK_PERIOD_S = 2.0
HEALTH_CHECK_TIMEOUT_S = 30.0
GRACEFUL_SHUTDOWN_TIMEOUT_S = 5.0
HEALTH_PROBE_HEADROOM = 8


@dataclass(frozen=True)
class DeploymentPlan:
    model_id: str  # the OpenAI `model` name and the Ray Serve deployment name
    engine: str
    source: ModelSource
    tokenizer: str | None
    chat_template: str | None  # Jinja text; None means the model's own
    num_replicas: int  # with autoscaling: the replicas it starts with (min_replicas)
    num_cpus: float
    num_gpus: float
    max_ongoing_requests: int
    max_model_len: int | None
    sampling: SamplingSpec  # the spec's defaults for what a request leaves out
    options: EngineOptions  # the engine's own keys of the spec (dtype, device, quantization, ...), typed
    engine_args: dict[str, Any] = field(default_factory=dict)  # the pass-through table, untouched
    limits: RequestLimits = field(default_factory=RequestLimits)
    tool_parser: str | None = None
    autoscaling: AutoscalingSpec | None = None  # None: a fixed num_replicas
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources per replica (node placement)

    @property
    def supports(self) -> frozenset[str]:
        return ENGINES[self.engine].supports

    @property
    def max_replicas(self) -> int:
        """The most replicas this model can have: what the request limits are sized for."""
        return self.autoscaling.max_replicas if self.autoscaling else self.num_replicas

    @property
    def ray_actor_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.resources:
            options["resources"] = dict(self.resources)
        return options

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments for this model's `serve.Deployment.options` (the caller adds the runtime env)."""
        if self.autoscaling is None:
            replicas: dict[str, Any] = {"num_replicas": self.num_replicas}
        else:
            # Every key explicit, so the spec's documented defaults are what Serve runs, whatever its own become.
            replicas = {"autoscaling_config": self.autoscaling.model_dump()}
        return {
            "name": self.model_id,
            **replicas,
            # Room for every request the ingress admits plus health probes: the replica itself holds generation to
            # max_ongoing_requests (ModelServer), so a probe never waits behind it in Ray's queue.
            "max_ongoing_requests": self.limits.capacity + HEALTH_PROBE_HEADROOM,
            "ray_actor_options": self.ray_actor_options,
            "health_check_period_s": HEALTH_CHECK_PERIOD_S,
            "health_check_timeout_s": HEALTH_CHECK_TIMEOUT_S,
            "graceful_shutdown_timeout_s": GRACEFUL_SHUTDOWN_TIMEOUT_S,
        }

    def card(self) -> ModelCard:
        return ModelCard(
            id=self.model_id,
            engine=self.engine,
            max_model_len=self.max_model_len,
            supports=self.supports,
            sampling=self.sampling.model_dump(exclude_none=True),
            limits=self.limits,
            tool_parser=self.tool_parser,
            task=ENGINES[self.engine].task,
        )


def base_url(host: str, port: int) -> str:
    """The URL a client on this machine uses for a server bound to host:port (wildcards and loopback read as
    localhost; IPv6 addresses in brackets)."""
    host = "localhost" if host in ("0.0.0.0", "127.0.0.1", "::") else host
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


@dataclass(frozen=True)
class Access:
    """Who may call the app's HTTP and what it keeps for them: what every front replica needs of the [server] table
    beyond its address."""

    api_key: str | None = None
    auth_mode: str = "auto"
    store_completions: bool = False
    store_retention_days: float = 30.0


@dataclass(frozen=True)
class AppPlan:
    app_name: str
    host: str
    port: int
    api_key: str | None
    database_url: str | None
    ray_address: str | None
    ray_num_cpus: int | None
    deployments: tuple[DeploymentPlan, ...]
    ingress_num_cpus: float = INGRESS_NUM_CPUS  # per ingress replica
    ingress_replicas: int | None = None  # None: decided once the cluster's size is known (`with_ingress_replicas`)
    # The model whose replicas serve the app's HTTP themselves (see `build_plan`); None: a separate ingress does.
    front: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    allowed_hosts: tuple[str, ...] = ANY_HOST
    auth_mode: str = "auto"  # "auto": keys are checked once any exist; "keys": always
    store_completions: bool = False
    store_retention_days: float = 30.0

    def access(self) -> Access:
        return Access(self.api_key, self.auth_mode, self.store_completions, self.store_retention_days)

    @property
    def separate_ingress(self) -> bool:
        return self.front is None

    @property
    def http_deployment(self) -> str:
        """The Ray Serve deployment that answers the app's HTTP."""
        return self.front or INGRESS_NAME

    @property
    def model_ids(self) -> list[str]:
        return [d.model_id for d in self.deployments]

    @property
    def cards(self) -> tuple[ModelCard, ...]:
        return tuple(d.card() for d in self.deployments)

    def with_ingress_replicas(self, cluster_cpus: float) -> AppPlan:
        """The spec's ingress replicas, else 2 on a cluster of 4 CPUs or more (one can die without taking the
        endpoint down), else 1 (a 2-core machine keeps its CPU for the model)."""
        from dataclasses import replace

        if self.ingress_replicas is not None or not self.separate_ingress:
            return self
        return replace(self, ingress_replicas=2 if cluster_cpus >= MULTI_INGRESS_MIN_CPUS else 1)

    @property
    def ingress_cpus(self) -> float:
        """CPUs the separate ingress takes in all (none when the model serves HTTP itself)."""
        return self.ingress_num_cpus * (self.ingress_replicas or 1) if self.separate_ingress else 0.0

    def ingress_options(self) -> dict[str, Any]:
        """Keyword arguments for the ingress's `serve.Deployment.options`."""
        return {
            "name": INGRESS_NAME,
            "num_replicas": self.ingress_replicas or 1,
            "max_ongoing_requests": INGRESS_MAX_ONGOING_REQUESTS,
            "ray_actor_options": {"num_cpus": self.ingress_num_cpus},
        }

    @property
    def base_url(self) -> str:
        return base_url(self.host, self.port)

    def with_server(self, host: str | None = None, port: int | None = None) -> AppPlan:
        from dataclasses import replace

        if host and host != self.host and self.allowed_hosts == _allowed_hosts(self.host, None):
            # --host moved a default allow-list along with the bind
            return replace(self, host=host, port=port or self.port, allowed_hosts=_allowed_hosts(host, None))
        return replace(self, host=host or self.host, port=port or self.port)


def load_plan(path: str | Path, host: str | None = None, port: int | None = None) -> AppPlan:
    """Read a spec file and plan it; `host` and `port` override its [server] table. Raises SpecError."""
    path = Path(path)
    return build_plan(load_spec(path), base_dir=path.parent, source=str(path)).with_server(host, port)


def build_plan(spec: AppSpec, base_dir: str | Path = ".", source: str = "<spec>") -> AppPlan:
    """Turn a validated spec into a plan; relative paths resolve against `base_dir` (the spec's folder)."""
    base = Path(base_dir).resolve()
    problems: list[Problem] = []
    deployments = []
    for name, dep in spec.deployments.items():
        path = f"deployments.{name}"
        model_source = resolve_model_source(dep.model, dep.revision, base)
        template = _resolve_template(dep.chat_template, base, f"{path}.chat_template", problems)
        engine = ENGINES[dep.engine]
        if engine.task == "embed":
            for key in ("chat_template", "tool_parser", "sampling"):
                if key in dep.model_fields_set:
                    problems.append(Problem(f"{path}.{key}", f"an embedding model ({dep.engine}) generates no text, "
                                            f"so {key} means nothing for it; remove it"))  # fmt: skip
        for key in dep.sampling.model_dump(exclude_none=True) if engine.task == "generate" else ():
            if key not in engine.supports:
                problems.append(
                    Problem(f"{path}.sampling.{key}", f"the {dep.engine} engine cannot honour {key}; remove it")
                )
        tokenizer = dep.tokenizer
        if tokenizer and (_looks_local(tokenizer) or _local_path(tokenizer, base).exists()):
            tokenizer = str(_local_path(tokenizer, base))
        deployments.append(
            DeploymentPlan(
                model_id=name,
                engine=dep.engine,
                source=model_source,
                tokenizer=tokenizer,
                chat_template=template,
                num_replicas=dep.autoscaling.min_replicas if dep.autoscaling else dep.num_replicas,
                num_cpus=dep.num_cpus,
                num_gpus=dep.num_gpus,
                resources=dict(dep.resources),
                max_ongoing_requests=dep.max_ongoing_requests,
                max_model_len=dep.max_model_len,
                sampling=dep.sampling,
                options=engine.options.model_validate(dep.model_dump(include=set(engine.options.model_fields))),
                engine_args=dict(dep.engine_args),
                limits=_limits(dep, spec.server.request_timeout_s),
                tool_parser=dep.tool_parser,
                autoscaling=dep.autoscaling,
            )
        )
    if problems:
        raise SpecError(source, problems)
    return AppPlan(
        app_name=spec.name,
        host=spec.server.host,
        port=spec.server.port,
        api_key=spec.server.api_key,
        auth_mode=spec.server.auth,
        store_completions=spec.server.store_completions,
        store_retention_days=spec.server.store_retention_days,
        ingress_replicas=spec.server.ingress_replicas,
        front=_front(spec, deployments),
        max_body_bytes=int(spec.server.max_body_mb * MIB),
        allowed_hosts=_allowed_hosts(spec.server.host, spec.server.allowed_hosts),
        database_url=spec.database.url,
        ray_address=spec.ray.address,
        ray_num_cpus=spec.ray.num_cpus,
        deployments=tuple(deployments),
    )


def _front(spec: AppSpec, deployments: list[DeploymentPlan]) -> str | None:
    """Which model serves HTTP itself: with ingress "auto", the app's one text model (embedding models beside it
    are reached through their handles), or its only model. Then each token crosses one Ray hop (replica -> HTTP
    proxy) instead of two (measured in bench/serve_bench.py). Several text models, ingress "separate" or
    ingress_replicas: a separate ingress (None)."""
    if spec.server.ingress == "separate" or spec.server.ingress_replicas is not None:
        return None
    text_models = [d.model_id for d in deployments if ENGINES[d.engine].task == "generate"]
    if len(text_models) == 1:
        return text_models[0]
    return deployments[0].model_id if len(deployments) == 1 else None


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def _allowed_hosts(bind: str, allowed: list[str] | None) -> tuple[str, ...]:
    if allowed is not None:
        return tuple(allowed)
    return LOOPBACK_HOSTS if bind in LOOPBACK_HOSTS else ANY_HOST


def _limits(dep: Any, server_timeout_s: float) -> RequestLimits:
    # An autoscaled model is admitted for all the replicas it may grow to: what waits meanwhile is the load that
    # makes the autoscaler add them.
    replicas = dep.autoscaling.max_replicas if dep.autoscaling else dep.num_replicas
    queued = dep.max_queued_requests
    if queued is None:
        queued = 2 * dep.max_ongoing_requests * replicas
    return RequestLimits(
        capacity=dep.max_ongoing_requests * replicas + queued,
        timeout_s=dep.request_timeout_s or server_timeout_s,
        max_tokens_per_request=dep.max_tokens_per_request,
        max_logprobs_per_request=dep.max_logprobs_per_request,
    )


_PACKAGE_PREFIX = "pkg:"


def resolve_model_source(model: str, revision: str | None, base: Path) -> ModelSource:
    """Classify the `model` string. Hub ids look like relative paths; a path that exists wins."""
    if model.startswith(_PACKAGE_PREFIX):
        return ModelSource("package", model[len(_PACKAGE_PREFIX) :], revision)
    local = _local_path(model, base)
    if _looks_local(model) or local.exists():
        kind = "gguf" if local.suffix == ".gguf" else "local"
        return ModelSource(kind, str(local), revision)
    return ModelSource("hub", model, revision)


def _looks_local(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or value.endswith(".gguf")


def _local_path(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


_JINJA = re.compile(r"{%|{{")


def _resolve_template(value: str | None, base: Path, path: str, problems: list[Problem]) -> str | None:
    if value is None or value == "model":
        return None
    if value in BUNDLED_TEMPLATES:
        return resources.files("runtime.templates").joinpath(f"{value}.jinja").read_text(encoding="utf-8")
    if _JINJA.search(value):
        return value
    file = _local_path(value, base)
    if not file.is_file():
        problems.append(
            Problem(
                path,
                f"{value!r} is not a bundled template ({', '.join(BUNDLED_TEMPLATES)}), inline Jinja, or an "
                f"existing file (looked for {file}); fix the name or the path",
            )
        )
        return None
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(path, f"cannot read {file}: {exc}; save it as UTF-8 text"))
        return None


def local_path_problems(plan: AppPlan) -> list[Problem]:
    """Local model paths that do not exist on this machine: an error for `aana up` on a local Ray."""
    return [
        Problem(f"deployments.{d.model_id}.model", f"{d.source.location} does not exist; fix the path")
        for d in plan.deployments
        if d.source.kind in ("local", "gguf") and not Path(d.source.location).exists()
    ]
