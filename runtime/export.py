"""A spec -> the files a production Ray platform deploys: a Ray Serve config (`serve deploy FILE`) or a KubeRay
`RayService` manifest that embeds the same config as its `serveConfigV2`.

Owns the shape of those files and the contract with `runtime.serve_builder` (`BuildArgs`: what the config's `args`
carry). The spec travels as its own text, never interpolated: `${VAR}` references stay references, resolved from the
environment of the cluster when Serve builds the app, so no secret is ever written into an exported file. Relative
local paths (model folders, tokenizers, template files) cannot travel: they are resolved against the spec's folder,
named in `args.base_dir`, and listed in the file's header as paths every node must have. Pure: no Ray import (Serve's
config schema is plain YAML), so `aana export` runs where only the CLI is installed.
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field

from runtime.plan import BUNDLED_TEMPLATES, AppPlan, build_plan
from runtime.spec import _ENV_REF, Problem, SpecError, parse_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

Format = Literal["serve", "rayservice"]
FORMATS: tuple[Format, ...] = ("serve", "rayservice")
BUILDER = "runtime.serve_builder:build"  # Serve imports this on the cluster: aana must be installed on every node
# The replicas' environment, here and not in runtime.app (which imports Ray) so export needs no Ray.
# Passed to replicas so that a cluster's workers see the same offline/cache settings as the driver.
FORWARDED_ENV = (
    "HF_HUB_OFFLINE", "HF_HOME", "TRANSFORMERS_OFFLINE", "AANA_CACHE_DIR",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP",
)  # fmt: skip
# Ray Serve's own tuning advice for fully async replicas: run user code on the replica's event loop instead of a
# separate thread, and the router on the caller's loop. Every aana replica is async (blocking model work runs in
# executors), and each streamed token crosses two replicas: measured in bench/ (vLLM SmolLM2, concurrency 1) this
# took aana from 0.81x to 0.87x of vLLM's own server's output tokens/s. The operator's own setting wins.
SERVE_ENV_DEFAULTS = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}
# A pod's Service reaches the proxy only on a non-loopback address.
POD_HOST = "0.0.0.0"
# Not a pullable image on purpose: the manifest needs an image with Ray and aana (and the engines' packages).
IMAGE_PLACEHOLDER = "REPLACE-WITH-AN-IMAGE-WITH-AANA:ray-{ray}"
HEAD_RESOURCES = {"cpu": "2", "memory": "4Gi"}  # the GCS, the dashboard, Serve's controller and a proxy
WORKER_MEMORY = "8Gi"  # the spec says nothing about memory: size it to the models


class BuildArgs(BaseModel):
    """The `args` of the exported Serve application: what `runtime.serve_builder.build` receives."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: str = Field(description="The spec's TOML text as written; ${VAR} is read from the cluster's environment.")
    source: str = Field("<spec>", description="The spec's file name, for error messages.")
    base_dir: str | None = Field(
        None, description="Folder that relative local paths of the spec resolve against (the spec's folder)."
    )
    host: str | None = Field(None, description="The proxy's host (http_options), when it differs from the spec's.")
    port: int | None = Field(None, ge=1, le=65535, description="The proxy's port, when it differs from the spec's.")


@dataclass(frozen=True)
class Exported:
    """An exported file: the document, its YAML text (header comments included), and what the operator must know."""

    document: dict[str, Any]
    text: str
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _EnvRef:
    path: str  # the spec key that holds it
    name: str
    has_default: bool


@dataclass(frozen=True)
class _LocalPath:
    path: str  # the spec key
    written: str
    resolved: Path

    @property
    def relative(self) -> bool:
        """Relative to the spec's folder (`~` expands on each node instead)."""
        return not (Path(self.written).is_absolute() or self.written.startswith("~"))


@dataclass(frozen=True)
class _Spec:
    """A spec as export reads it: its text (what travels), its raw tables (what was written) and its plan."""

    path: Path
    text: str
    raw: dict[str, Any]
    plan: AppPlan
    env: list[_EnvRef]
    local_paths: list[_LocalPath]


def export(path: str | Path, fmt: Format = "serve", host: str | None = None, port: int | None = None) -> Exported:
    """The Serve config or the RayService manifest of the spec at `path`; `host` and `port` override [server]
    (a RayService listens on 0.0.0.0 unless `host` says otherwise). Raises SpecError."""
    spec = _read(Path(path))
    if fmt == "rayservice":
        document, header = _rayservice(spec, host or POD_HOST, port)
    else:
        document, header = _serve_config(spec, host, port)
    return Exported(document, _comment(header) + dump_yaml(document), _warnings(spec))


# ---------------------------------------------------------------------------------------------------------------
# Reading the spec


def _read(path: Path) -> _Spec:
    text = _text(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        raw = {}  # parse_spec says what is wrong with it
    env = list(_env_refs(raw, ()))
    # Checked with this shell's variables where set; an unset one keeps its reference: export never needs secrets.
    unset = {r.name: f"${{{r.name}}}" for r in env if not r.has_default and r.name not in os.environ}
    source = str(path)
    plan = build_plan(parse_spec(text, source, os.environ | unset), base_dir=path.parent, source=source)
    return _Spec(path, text, raw, plan, env, _local_paths(raw, plan, path.parent.resolve()))


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(str(path), [Problem("<file>", "no such file; check the path")]) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise SpecError(str(path), [Problem("<file>", f"cannot read it: {exc}")]) from None


def _env_refs(value: Any, path: tuple[str, ...]):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _env_refs(item, (*path, str(key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _env_refs(item, (*path[:-1], f"{path[-1]}[{i}]"))
    elif isinstance(value, str):
        for match in _ENV_REF.finditer(value):
            yield _EnvRef(".".join(path), match.group(1), match.group(2) is not None)


_JINJA = re.compile(r"{%|{{")


def _local_paths(raw: dict[str, Any], plan: AppPlan, base: Path) -> list[_LocalPath]:
    """The spec's model, tokenizer and template paths on the local file system, as written and as resolved."""
    found = []
    for d in plan.deployments:
        table = raw.get("deployments", {}).get(d.model_id, {})
        key = f"deployments.{d.model_id}"
        if d.source.kind in ("local", "gguf") and "model" in table:
            found.append(_LocalPath(f"{key}.model", table["model"], Path(d.source.location)))
        if d.tokenizer and Path(d.tokenizer).is_absolute() and "tokenizer" in table:
            found.append(_LocalPath(f"{key}.tokenizer", table["tokenizer"], Path(d.tokenizer)))
        template = table.get("chat_template")
        if template and template != "model" and template not in BUNDLED_TEMPLATES and not _JINJA.search(template):
            written = Path(template).expanduser()
            found.append(_LocalPath(f"{key}.chat_template", template, written if written.is_absolute() else
                                    (base / written).resolve()))  # fmt: skip
    return [p for p in found if "${" not in p.written]


def _warnings(spec: _Spec) -> list[str]:
    """What makes the exported file less than portable: literal secrets and paths that must exist on the nodes."""
    found = []
    server = spec.raw.get("server", {})
    if isinstance(server.get("api_key"), str) and "${" not in server["api_key"]:
        found.append("server.api_key is written in the spec itself, so it is in the exported file too; write "
                     "api_key = \"${AANA_API_KEY}\" and set the variable on the cluster")  # fmt: skip
    url = spec.raw.get("database", {}).get("url")
    if isinstance(url, str) and (password := urlsplit(url).password) and "${" not in password:
        found.append("database.url holds a password, so it is in the exported file too; write it as ${VAR}")
    for p in spec.local_paths:
        if p.relative:
            found.append(f"{p.path}: {p.written} is relative to the spec's folder; the cluster reads "
                         f"{p.resolved}, which must exist on every node that runs the model")  # fmt: skip
    return found


# ---------------------------------------------------------------------------------------------------------------
# The Serve config


def _serve_config(spec: _Spec, host: str | None, port: int | None) -> tuple[dict[str, Any], list[str]]:
    plan = spec.plan.with_server(host, port)
    args = BuildArgs(
        spec=spec.text,
        source=spec.path.name,
        base_dir=str(spec.path.parent.resolve()) if any(p.relative for p in spec.local_paths) else None,
        host=host,
        port=port,
    )
    app = {
        "name": plan.app_name,
        "route_prefix": "/",
        "import_path": BUILDER,
        "runtime_env": {"env_vars": runtime_env_vars()},
        "args": args.model_dump(exclude_none=True),
    }
    config = {
        "http_options": {"host": plan.host, "port": plan.port},
        "logging_config": {"log_level": "WARNING"},  # as `aana up`: aana's own messages, not Serve's access log
        "applications": [app],
    }
    return config, _serve_header(spec, plan)


def runtime_env_vars(environ: dict[str, str] | None = None) -> dict[str, str]:
    """What `aana up` gives every replica: Serve's tuning defaults and this shell's offline/cache settings."""
    environ = os.environ if environ is None else environ
    return SERVE_ENV_DEFAULTS | {k: environ[k] for k in FORWARDED_ENV if k in environ}


def _serve_header(spec: _Spec, plan: AppPlan) -> list[str]:
    lines = [
        f"Ray Serve config of the aana app {plan.app_name!r}, exported from {spec.path.name} by `aana export`.",
        "Deploy it with `serve deploy FILE --address http://HEAD:8265` (the dashboard's address). Every node needs "
        f"Ray {_ray_version()} and aana installed with the engines it runs: Serve imports {BUILDER}.",
        "args.spec is the spec as written: ${VAR} references are read from the environment of the Ray cluster "
        "(where `ray start` ran) when Serve builds the app, never from this file; a missing one fails the deploy "
        "with the spec's own message.",
    ]
    if names := _required_names(spec):
        lines.append(f"The cluster must define: {', '.join(names)}.")
    return lines + _notes(spec, plan)


def _notes(spec: _Spec, plan: AppPlan) -> list[str]:
    """What either format's header says beyond how to deploy it."""
    lines = ["runtime_env.env_vars: Serve's tuning defaults that aana applies, plus the offline/cache settings of "
             "the shell that exported (HF_HOME, HF_HUB_OFFLINE, ...) when set; edit them for the cluster."]  # fmt: skip
    for p in spec.local_paths:
        where = f"{p.written} resolves against args.base_dir to {p.resolved}" if p.relative else p.written
        lines.append(f"{p.path}: {where}; it must exist on every node that runs the model.")
    if plan.database_url:
        lines.append("database.url: every HTTP replica records requests there; run `aana migrate --spec SPEC` "
                     "against it first.")  # fmt: skip
    if plan.ray_address or plan.ray_num_cpus:
        lines.append("The spec's [ray] table does not apply: the app runs on the cluster this file is deployed to.")
    return lines


def _required_names(spec: _Spec) -> list[str]:
    return sorted({r.name for r in spec.env if not r.has_default})


def _ray_version() -> str:
    try:
        return metadata.version("ray")
    except metadata.PackageNotFoundError:
        return "2.60.0"


# ---------------------------------------------------------------------------------------------------------------
# The KubeRay RayService


def _rayservice(spec: _Spec, host: str, port: int | None) -> tuple[dict[str, Any], list[str]]:
    config, _ = _serve_config(spec, host, port)
    plan = spec.plan.with_server(host, port)
    name = k8s_name(plan.app_name)
    secret = f"{name}-env"
    image = IMAGE_PLACEHOLDER.format(ray=_ray_version())
    env = _secret_env(spec, secret)
    cpus, gpus = _cluster_size(plan)
    serve_port = {"containerPort": plan.port, "name": "serve"}
    head = _container("ray-head", image, env, dict(HEAD_RESOURCES), [
        {"containerPort": 6379, "name": "gcs-server"},
        {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": 10001, "name": "client"},
        serve_port,
    ])  # fmt: skip
    worker_limits = {"cpu": str(cpus), "memory": WORKER_MEMORY}
    worker = _container("ray-worker", image, env, worker_limits, [serve_port])
    if gpus:
        worker["resources"]["limits"]["nvidia.com/gpu"] = gpus
    manifest = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "aana"}},
        "spec": {
            "serveConfigV2": dump_yaml(config),
            "rayClusterConfig": {
                "rayVersion": _ray_version(),
                # The head runs Serve's controller and a proxy; the models go to the workers.
                "headGroupSpec": {"rayStartParams": {"num-cpus": "0"}, "template": {"spec": {"containers": [head]}}},
                "workerGroupSpecs": [
                    {
                        "groupName": "models",
                        "replicas": 1,
                        "minReplicas": 1,
                        "maxReplicas": 1,
                        "rayStartParams": {},
                        "template": {"spec": {"containers": [worker]}},
                    }
                ],
            },
        },
    }
    header = [
        f"KubeRay RayService of the aana app {plan.app_name!r}, exported from {spec.path.name} by `aana export "
        "--format rayservice`. Apply it with `kubectl apply -f FILE` (the KubeRay operator must be installed).",
        f"image: {image} is a placeholder: use an image with Ray {_ray_version()}, aana and the engines' packages "
        f"(Serve imports {BUILDER} in it).",
        f"spec.serveConfigV2 is the Ray Serve config `aana export --format serve` writes, with the proxy on "
        f"{host}:{plan.port} (the port KubeRay's serve Service targets).",
        f"The worker group holds every replica: {cpus} CPU{f' and {gpus} GPU' if gpus else ''} (the spec's "
        "num_cpus and num_gpus times replicas, max_replicas when autoscaled, plus the HTTP ingress, rounded up); "
        f"memory {WORKER_MEMORY} is a guess: size it to the models.",
    ]
    if env:
        names = ", ".join(e["name"] for e in env)
        header.append(f"${{VAR}} references of the spec ({names}) are read from the Secret {secret!r} when Serve "
                      f"builds the app: kubectl create secret generic {secret} --from-literal=NAME=VALUE ...")  # fmt: skip
    header += _notes(spec, plan)
    return manifest, header


def _container(name: str, image: str, env: list[dict], resources: dict, ports: list[dict]) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": image}
    if env:
        container["env"] = env
    container["ports"] = ports
    container["resources"] = {"limits": dict(resources), "requests": dict(resources)}
    return container


def _secret_env(spec: _Spec, secret: str) -> list[dict[str, Any]]:
    """One container variable per name the spec references, from the app's Secret (optional where the spec
    writes a default)."""
    required = set(_required_names(spec))
    names = sorted({r.name for r in spec.env})
    return [
        {"name": n, "valueFrom": {"secretKeyRef": {"name": secret, "key": n, "optional": n not in required}}}
        for n in names
    ]


def _cluster_size(plan: AppPlan) -> tuple[int, int]:
    """CPUs and GPUs that every replica of the app takes together (autoscaled models at their max_replicas), rounded
    up, at least one CPU. The HTTP ingress counts as many replicas as the builder gives it on a cluster that size."""
    models = sum(d.num_cpus * d.max_replicas for d in plan.deployments)
    cpus = max(1, math.ceil(models + plan.with_ingress_replicas(0).ingress_cpus - 1e-9))
    cpus = max(cpus, math.ceil(models + plan.with_ingress_replicas(cpus).ingress_cpus - 1e-9))
    gpus = sum(d.num_gpus * d.max_replicas for d in plan.deployments)
    return cpus, math.ceil(gpus - 1e-9)


def k8s_name(app_name: str) -> str:
    """The app name as a Kubernetes object name: lower case, letters, digits and '-', starting with a letter."""
    name = re.sub(r"[^a-z0-9-]+", "-", app_name.lower()).strip("-")
    if not name[:1].isalpha():
        name = f"aana-{name}"
    return name[:40].rstrip("-")


# ---------------------------------------------------------------------------------------------------------------
# YAML


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # a manifest for people to read: no &id001 anchors


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    # Multi-line text (the spec, serveConfigV2) as a block, readable as the file it was.
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def dump_yaml(document: dict[str, Any]) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=4096, allow_unicode=True)


def _comment(lines: list[str]) -> str:
    return "".join(f"# {line}\n" for line in lines)
