"""AppSpec -> AppPlan: the plain, picklable description of what to deploy. Pure: no Ray, no engine libraries.

The plan resolves everything that depends on where the spec file lives (relative paths, template files) so that a
replica on another node needs nothing but the plan. Problems found here are SpecErrors that name the key path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from runtime.engines.registry import ENGINES
from runtime.spec import AppSpec, Problem, SpecError

BUNDLED_TEMPLATES = ("llama2", "chatml")
INGRESS_NUM_CPUS = 0.1
INGRESS_NAME = "OpenAIIngress"  # the Ray Serve deployment name of the HTTP ingress
DEFAULT_HEALTH_CHECK_PERIOD_S = 10.0


@dataclass(frozen=True)
class ModelSource:
    """Where the weights are. `location` is a Hugging Face id or an absolute path."""

    kind: Literal["hub", "local", "gguf", "package"]
    location: str
    revision: str | None = None

    def describe(self) -> str:
        return f"{self.location} ({self.kind})"


@dataclass(frozen=True)
class DeploymentPlan:
    model_id: str  # the OpenAI `model` name and the Ray Serve deployment name
    engine: str
    source: ModelSource
    tokenizer: str | None
    chat_template: str | None  # Jinja text; None means the model's own
    num_replicas: int
    num_cpus: float
    num_gpus: float
    max_ongoing_requests: int
    max_model_len: int | None
    sampling: dict[str, Any]  # the spec's defaults, only those set
    options: dict[str, Any]  # engine-specific keys of the spec (dtype, device, quantization, ...)
    engine_args: dict[str, Any]  # the pass-through table, untouched
    supports: frozenset[str] = field(default_factory=frozenset)

    @property
    def ray_actor_options(self) -> dict[str, Any]:
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}


def base_url(host: str, port: int) -> str:
    """The URL a client on this machine uses for a server bound to host:port (wildcards and loopback read as
    localhost; IPv6 addresses in brackets)."""
    host = "localhost" if host in ("0.0.0.0", "127.0.0.1", "::") else host
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


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
    ingress_num_cpus: float = INGRESS_NUM_CPUS
    run_id: str | None = None  # this `aana up`'s row in the database's deployments table

    @property
    def model_ids(self) -> list[str]:
        return [d.model_id for d in self.deployments]

    @property
    def base_url(self) -> str:
        return base_url(self.host, self.port)

    def with_server(self, host: str | None = None, port: int | None = None) -> AppPlan:
        from dataclasses import replace

        return replace(self, host=host or self.host, port=port or self.port)


_COMMON_KEYS = {
    "engine", "model", "tokenizer", "revision", "num_replicas", "num_cpus", "num_gpus", "max_model_len",
    "max_ongoing_requests", "chat_template", "sampling", "engine_args",
}  # fmt: skip


def build_plan(spec: AppSpec, base_dir: str | Path = ".", source: str = "<spec>") -> AppPlan:
    """Turn a validated spec into a plan; relative paths resolve against `base_dir` (the spec's folder)."""
    base = Path(base_dir).resolve()
    problems: list[Problem] = []
    deployments = []
    for name, dep in spec.deployments.items():
        path = f"deployments.{name}"
        model_source = resolve_model_source(dep.model, dep.revision, base)
        template = _resolve_template(dep.chat_template, base, f"{path}.chat_template", problems)
        for key in dep.sampling.model_dump(exclude_none=True):
            if key not in ENGINES[dep.engine].supports:
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
                num_replicas=dep.num_replicas,
                num_cpus=dep.num_cpus,
                num_gpus=dep.num_gpus,
                max_ongoing_requests=dep.max_ongoing_requests,
                max_model_len=dep.max_model_len,
                sampling=dep.sampling.model_dump(exclude_none=True),
                options={k: v for k, v in dep.model_dump().items() if k not in _COMMON_KEYS},
                engine_args=dict(dep.engine_args),
                supports=ENGINES[dep.engine].supports,
            )
        )
    if problems:
        raise SpecError(source, problems)
    return AppPlan(
        app_name=spec.name,
        host=spec.server.host,
        port=spec.server.port,
        api_key=spec.server.api_key,
        database_url=spec.database.url,
        ray_address=spec.ray.address,
        ray_num_cpus=spec.ray.num_cpus,
        deployments=tuple(deployments),
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
