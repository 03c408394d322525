"""Bringing a plan up on Ray and down again: pre-flight checks, Ray start/connect, deploy, wait, shut down.

Ray leaves a deployment that asks for resources the cluster lacks pending forever, so every requirement is checked
before deploying and the wait runs against a deadline. Failures raise `LaunchError`, whose message names the fix.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from runtime.engines.registry import ENGINES, missing_packages
from runtime.plan import AppPlan

POLL_INTERVAL_S = 0.5


class LaunchError(Exception):
    """`aana up` cannot go on; the message says why and what to do."""


@dataclass
class DeploymentProgress:
    name: str
    status: str
    replicas: dict[str, int] = field(default_factory=dict)
    message: str = ""


@dataclass
class Progress:
    app_status: str
    elapsed_s: float
    deployments: list[DeploymentProgress]


def preflight(plan: AppPlan, embedded: bool) -> list[str]:
    """Problems that need no Ray to find: missing engine packages, missing GPUs on this machine, a busy port."""
    problems = engine_arg_problems(plan)
    for d in plan.deployments:
        missing = missing_packages(d.engine)
        if missing:
            problems.append(
                f"deployment {d.model_id!r} uses engine {d.engine!r}, but {', '.join(missing)} is not installed "
                f"in this Python; install it: {ENGINES[d.engine].install_hint}"
            )
    if embedded:
        gpus = local_gpu_count()
        problems += gpu_problems(plan, gpus, where="this machine")
        if not port_is_free(plan.host, plan.port):
            problems.append(
                f"port {plan.port} on {plan.host} is already in use; stop what uses it or pass --port (or set "
                "server.port in the spec)"
            )
    return problems


def engine_arg_problems(plan: AppPlan) -> list[str]:
    """Pass-through `engine_args` checked against the engine's own argument names, where the engine is installed."""
    problems = []
    for d in plan.deployments:
        if d.engine != "vllm" or not d.engine_args or missing_packages("vllm"):
            continue
        import dataclasses

        from vllm.engine.arg_utils import AsyncEngineArgs

        from runtime.engines.vllm_args import unknown_engine_args

        valid = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
        problems += [f"deployments.{d.model_id}.{m}" for m in unknown_engine_args(d.engine_args, valid)]
    return problems


def gpu_problems(plan: AppPlan, gpus: float, where: str) -> list[str]:
    return [
        f"deployment {d.model_id!r} needs {d.num_gpus:g} GPU per replica, but {where} has "
        f"{'no GPU' if not gpus else f'{gpus:g} GPU'}; run it where a GPU is visible to Ray, or lower "
        f"deployments.{d.model_id}.num_gpus"
        for d in plan.deployments
        if d.num_gpus > gpus
    ]


def cpu_problems(plan: AppPlan, cpus: float) -> list[str]:
    needed = plan.ingress_num_cpus + sum(d.num_cpus * d.num_replicas for d in plan.deployments)
    if needed <= cpus + 1e-9:
        return []
    detail = ", ".join(f"{d.model_id}: {d.num_replicas} x {d.num_cpus:g}" for d in plan.deployments)
    return [
        f"the deployments need {needed:g} CPUs in all (ingress {plan.ingress_num_cpus:g}, {detail}) but the Ray "
        f"cluster has {cpus:g}; lower num_cpus (fractions are allowed) or num_replicas"
    ]


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


# Ray Serve's own tuning advice for fully async replicas: run user code on the replica's event loop instead of a
# separate thread, and the router on the caller's loop. Every aana replica is async (blocking model work runs in
# executors), and each streamed token crosses two replicas: measured in bench/ (vLLM SmolLM2, concurrency 1) this
# took aana from 0.81x to 0.87x of vLLM's own server's output tokens/s. The operator's own setting wins.
# Only for the cluster's workers: this driver calls handles from plain threads (aana down's drain), which needs the
# router's own loop.
SERVE_ENV_DEFAULTS = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}


def start_ray(plan: AppPlan, address: str | None) -> None:
    import ray

    # aana reports what matters itself; Ray's start-up notices would bury it.
    logging.getLogger("ray").setLevel(logging.ERROR)
    kwargs: dict = {"namespace": "aana", "logging_level": logging.ERROR, "log_to_driver": False}
    if address:
        kwargs["address"] = address
    else:
        kwargs.update(include_dashboard=False, num_cpus=plan.ray_num_cpus)
    added = {k: v for k, v in SERVE_ENV_DEFAULTS.items() if k not in os.environ}
    os.environ.update(added)  # the embedded cluster's processes inherit this environment when ray.init starts them
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise LaunchError(f"could not start or reach {where}: {exc}") from None
    finally:
        for key in added:
            os.environ.pop(key)


def check_cluster(plan: AppPlan) -> list[str]:
    import ray

    resources = ray.cluster_resources()
    return gpu_problems(plan, resources.get("GPU", 0.0), "the Ray cluster") + cpu_problems(
        plan, resources.get("CPU", 0.0)
    )


def deploy(plan: AppPlan) -> None:
    from ray import serve

    from runtime.app import build_app

    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    serve.start(http_options={"host": plan.host, "port": plan.port}, logging_config={"log_level": "WARNING"})
    target = serve.RunTarget(build_app(plan), name=plan.app_name, route_prefix="/")
    serve.run_many([target], wait_for_applications_running=False)


def read_progress(plan: AppPlan, started: float) -> Progress:
    from ray import serve

    app = serve.status().applications.get(plan.app_name)
    if app is None:
        return Progress("NOT_STARTED", time.monotonic() - started, [])
    deployments = [
        DeploymentProgress(
            name=name,
            status=str(getattr(d.status, "value", d.status)),
            replicas={str(getattr(k, "value", k)): v for k, v in (d.replica_states or {}).items()},
            message=d.message or "",
        )
        for name, d in app.deployments.items()
    ]
    return Progress(str(getattr(app.status, "value", app.status)), time.monotonic() - started, deployments)


def wait_until_running(plan: AppPlan, timeout_s: float, on_progress: Callable[[Progress], None]) -> Progress:
    started = time.monotonic()
    while True:
        progress = read_progress(plan, started)
        on_progress(progress)
        if progress.app_status == "RUNNING":
            return progress
        if progress.app_status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise LaunchError(_failure_text(progress))
        if progress.elapsed_s > timeout_s:
            pending = ", ".join(f"{d.name} ({d.status})" for d in progress.deployments if d.status != "HEALTHY")
            raise LaunchError(
                f"not running after {timeout_s:.0f} s; still waiting for: {pending or plan.app_name}. "
                "Raise --timeout if the model is large, or look at the replica logs under /tmp/ray/session_latest/logs"
            )
        time.sleep(POLL_INTERVAL_S)


def _failure_text(progress: Progress) -> str:
    lines = ["the app failed to deploy:"]
    for d in progress.deployments:
        if d.status not in ("HEALTHY",) and d.message:
            lines.append(f"  {d.name}: {_last_error(d.message)}")
    return "\n".join(lines)


def _last_error(message: str) -> str:
    """Ray's message holds a whole traceback; the user needs its last line (the exception) and the summary."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    if len(lines) <= 2:
        return " ".join(lines)
    return f"{lines[0]} ... {lines[-1].strip()}"


def shutdown(plan: AppPlan, owned: bool) -> None:
    """Remove what `aana up` deployed. On a cluster aana did not start, other apps and Serve itself stay."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    try:
        if owned:
            serve.shutdown()
        else:
            serve.delete(plan.app_name)
    finally:
        ray.shutdown()


class Unreachable(LaunchError):
    """No Ray cluster answers at the address."""


def connect(address: str, auth_mode: str | None = None) -> None:
    """Join a running cluster as a driver (for status and down); never starts one.

    `auth_mode` is the RAY_AUTH_MODE the cluster's own driver ran with: Ray only sends its token to an explicit
    address when the mode says so, and new local clusters use tokens by default.
    """
    if auth_mode and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = auth_mode  # before `import ray`: Ray reads it when it loads
    import ray

    logging.getLogger("ray").setLevel(logging.ERROR)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    try:
        ray.init(address=address, namespace="aana", logging_level=logging.ERROR, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise Unreachable(f"no Ray cluster answers at {address}: {exc}") from None


def auth_mode() -> str | None:
    """The RAY_AUTH_MODE this driver ended up with (ray.init sets it when it turns token auth on)."""
    return os.environ.get("RAY_AUTH_MODE")


def gcs_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def app_exists(app_name: str) -> bool:
    from ray import serve

    app = serve.status().applications.get(app_name)
    return app is not None and str(getattr(app.status, "value", app.status)) != "DELETING"


def drain(app_name: str, timeout_s: float) -> int:
    """Make the app's ingress refuse new requests, wait up to timeout_s for those in flight; return what is left."""
    from ray import serve
    from ray.exceptions import RayError
    from ray.serve.exceptions import RayServeException

    try:
        ingress = serve.get_app_handle(app_name)
        in_flight = ingress.drain.remote().result(timeout_s=10)
        deadline = time.monotonic() + timeout_s
        while in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
            in_flight = ingress.in_flight.remote().result(timeout_s=10)
    except (RayError, RayServeException, TimeoutError) as exc:
        logging.getLogger("aana").warning("could not drain %s: %s", app_name, exc)
        return 0
    return in_flight


def delete_app(app_name: str) -> None:
    from ray import serve

    serve.delete(app_name)


def disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
