"""What `aana up` checks before anything starts: engine packages, pass-through engine arguments, GPUs, CPUs, the
port and local model paths.

Ray leaves a deployment that asks for resources the cluster lacks pending forever, so every requirement that can
be known up front is checked here, each problem as one line that names the fix. No Ray: the cluster's own numbers
come from `runtime.cluster` and are judged by `gpu_problems` and `cpu_problems`.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess

from runtime.engines.registry import ENGINES, engine_arg_problems, missing_packages
from runtime.errors import LaunchError
from runtime.plan import AppPlan, DeploymentPlan, local_path_problems

# Ports a Ray node opens by default: the app's HTTP server would lose the race for them to the Ray `aana up` starts.
RAY_NODE_PORTS = {52365: "dashboard agent", 52366: "dashboard agent gRPC", 6379: "GCS", 10001: "Ray client server"}


def problems(plan: AppPlan, embedded: bool) -> list[str]:
    """Problems that need no Ray to find; `embedded`: the app will run on a Ray that `aana up` starts here."""
    found = engine_args_problems(plan) + missing_package_problems(plan)
    if embedded:
        found += gpu_problems(plan, local_gpu_count(), where="this machine")
        if plan.port in RAY_NODE_PORTS:
            found.append(
                f"port {plan.port} is one the embedded Ray takes for itself ({RAY_NODE_PORTS[plan.port]}); pass "
                "another --port (or set server.port in the spec)"
            )
        elif not port_is_free(plan.host, plan.port):
            found.append(
                f"port {plan.port} on {plan.host} is already in use; stop what uses it or pass --port (or set "
                "server.port in the spec)"
            )
    return found + [str(p) for p in local_path_problems(plan)]


def missing_package_problems(plan: AppPlan) -> list[str]:
    """Engines whose packages this Python lacks (`aana up` refuses them; `aana validate` warns)."""
    return [
        f"deployment {d.model_id!r}: engine {d.engine!r} needs {', '.join(missing)}, not installed here; install it: "
        f"{ENGINES[d.engine].install_hint}"
        for d in plan.deployments
        if (missing := missing_packages(d.engine))
    ]


def engine_args_problems(plan: AppPlan) -> list[str]:
    """Pass-through `engine_args` checked against each engine's own argument names, where the engine is installed."""
    return [
        f"deployments.{d.model_id}.{problem}"
        for d in plan.deployments
        for problem in engine_arg_problems(d.engine, d.engine_args)
    ]


def gpu_problems(plan: AppPlan, gpus: float, where: str) -> list[str]:
    """A replica that needs more GPU than there is, or more GPU than there is for the replicas that start (an
    autoscaled model starts min_replicas)."""
    found = [
        f"deployment {d.model_id!r} needs {d.num_gpus:g} GPU per replica, but {where} has "
        f"{'no GPU' if not gpus else f'{gpus:g} GPU'}; run it where a GPU is visible to Ray, or lower "
        f"deployments.{d.model_id}.num_gpus"
        for d in plan.deployments
        if d.num_gpus > gpus
    ]
    needed = sum(d.num_gpus * d.num_replicas for d in plan.deployments)
    if not found and needed > gpus + 1e-9:
        parts = [_share(d, d.num_gpus) for d in plan.deployments if d.num_gpus]
        found.append(
            f"the deployments need {needed:g} GPUs in all to start ({', '.join(parts)}) but {where} has {gpus:g}; "
            f"lower num_gpus (fractions are allowed), {_replica_keys(plan)}"
        )
    return found


def cpu_problems(plan: AppPlan, cpus: float) -> list[str]:
    """More CPU than the cluster has for the replicas that start (an autoscaled model starts min_replicas)."""
    ingress = plan.ingress_cpus
    needed = ingress + sum(d.num_cpus * d.num_replicas for d in plan.deployments)
    if needed <= cpus + 1e-9:
        return []
    parts = [f"ingress {ingress:g}"] if ingress else []
    parts += [_share(d, d.num_cpus) for d in plan.deployments]
    return [
        f"the deployments need {needed:g} CPUs in all to start ({', '.join(parts)}) but the Ray "
        f"cluster has {cpus:g}; lower num_cpus (fractions are allowed), {_replica_keys(plan)}"
    ]


def custom_resource_problems(plan: AppPlan, totals: dict[str, float]) -> list[str]:
    """Custom resources (`resources` in a deployment) the cluster's nodes do not have enough of to start."""
    needed: dict[str, float] = {}
    for d in plan.deployments:
        for name, amount in d.resources.items():
            needed[name] = needed.get(name, 0.0) + amount * d.num_replicas
    users = {name: [d.model_id for d in plan.deployments if name in d.resources] for name in needed}
    return [
        f"deployments {', '.join(users[name])} need {amount:g} of the custom resource {name!r} to start but the Ray "
        f"cluster has {totals.get(name, 0.0):g}; start a node with `ray start --address ... --resources "
        f"'{{\"{name}\": {amount:g}}}'`, or change deployments.{users[name][0]}.resources"
        for name, amount in sorted(needed.items())
        if amount > totals.get(name, 0.0) + 1e-9
    ]


def scaling_warnings(plan: AppPlan, cpus: float, gpus: float) -> list[str]:
    """Autoscaled models whose max_replicas the cluster cannot hold beside the rest of the app. Not an error: the app
    starts, and Ray leaves the replicas it cannot place pending until a node with room joins (or the load drops)."""
    found = []
    for kind, have, per_replica, base in (
        ("CPU", cpus, lambda d: d.num_cpus, plan.ingress_cpus),
        ("GPU", gpus, lambda d: d.num_gpus, 0.0),
    ):
        needed = base + sum(per_replica(d) * d.max_replicas for d in plan.deployments)
        scaled = [d for d in plan.deployments if d.autoscaling and per_replica(d) and d.max_replicas > d.num_replicas]
        if scaled and needed > have + 1e-9:
            names = ", ".join(f"{d.model_id} up to {d.max_replicas} x {per_replica(d):g}" for d in scaled)
            found.append(
                f"at autoscaling.max_replicas the deployments need {needed:g} {kind}s ({names}) but the Ray cluster "
                f"has {have:g}: replicas beyond that stay pending until a node with room joins; lower max_replicas "
                f"or num_{kind.lower()}s, or add nodes"
            )
    return found


def _share(d: DeploymentPlan, per_replica: float) -> str:
    return f"{d.model_id}: {d.num_replicas} x {per_replica:g}"


def _replica_keys(plan: AppPlan) -> str:
    """The keys that set how many replicas start: num_replicas, and min_replicas where a model autoscales."""
    if any(d.autoscaling for d in plan.deployments):
        return "num_replicas or autoscaling.min_replicas"
    return "or num_replicas"


def local_gpu_count() -> int:
    """GPUs on this machine as Ray would see them, without importing torch or starting Ray."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return 0
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    count = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    if visible:
        count = min(count, len([v for v in visible.split(",") if v.strip()]))
    return count


def port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise LaunchError(f"cannot listen on {host}:{port}: {exc}; check server.host") from None
    return True
