"""Everything aana asks of Ray: start or join a cluster, deploy an app, read Serve's status, drain, remove, stop.

All reading of Serve's status lives here (deploy progress, which apps exist, the snapshot `aana status` shows),
through the driver API only: no dashboard and no `serve` CLI, so Ray's token authentication does not matter.
Ray is imported inside the functions, so importing this module (the CLI does, through `runtime.lifecycle`) is free.
Failures raise `runtime.errors` types whose messages name the fix.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import LaunchError, Unreachable
from runtime.plan import AppPlan
from runtime.preflight import cpu_problems, custom_resource_problems, gpu_problems, scaling_warnings
from runtime.records import Recording

POLL_INTERVAL_S = 0.5


@dataclass
class DeploymentProgress:
    name: str
    status: str
    replicas: dict[str, int] = field(default_factory=dict)
    message: str = ""
    step: str = ""  # what a starting replica is doing now, e.g. "loading the weights (513 MB)"
    step_s: float = 0.0  # for how long it has been doing it


@dataclass
class Progress:
    app_status: str
    elapsed_s: float
    deployments: list[DeploymentProgress]


class StatusChanges:
    """Deploy progress as text lines, one per deployment whose status changed: for logs, CI and pipes."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def lines(self, progress: Progress) -> list[str]:
        changed = [d for d in progress.deployments if self.seen.get(d.name) != self._state(d)]
        self.seen.update((d.name, self._state(d)) for d in changed)
        return [f"[{progress.elapsed_s:5.1f} s] {d.name}: {d.status}" + (f", {d.step}" if d.step else "")
                for d in changed]  # fmt: skip

    @staticmethod
    def _state(d: DeploymentProgress) -> str:
        return f"{d.status} {d.step}"  # a line per step, not per second of it


def _quiet_ray() -> None:
    # aana reports what matters itself; Ray's start-up notices would bury it.
    logging.getLogger("ray").setLevel(logging.ERROR)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)


def start_ray(plan: AppPlan, address: str | None) -> None:
    """Join the cluster at `address`, or start an embedded one whose processes get Serve's tuning defaults."""
    import ray

    from runtime.export import SERVE_ENV_DEFAULTS

    _quiet_ray()
    kwargs: dict = {"namespace": "aana", "logging_level": logging.ERROR, "log_to_driver": False}
    if address:
        kwargs["address"] = address
    else:
        # "local": a new Ray for this app. Without it ray.init joins the newest cluster `ray start` made on this
        # machine (/tmp/ray/ray_current_cluster), even one that has since died, and hangs on its address.
        kwargs.update(address="local", include_dashboard=False, num_cpus=plan.ray_num_cpus)
    # Only for the cluster's workers: this driver calls handles from plain threads (drain), which needs the
    # router's own loop. The embedded cluster's processes inherit this environment when ray.init starts them.
    added = {k: v for k, v in SERVE_ENV_DEFAULTS.items() if k not in os.environ}
    os.environ.update(added)
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise LaunchError(f"could not start or reach {where}: {exc}") from None
    finally:
        for key in added:
            os.environ.pop(key)


def connect(address: str, auth_mode: str | None = None) -> None:
    """Join a running cluster as a driver (for status and down); never starts one.

    `auth_mode` is the RAY_AUTH_MODE the cluster's own driver ran with: Ray only sends its token to an explicit
    address when the mode says so, and new local clusters use tokens by default.
    """
    if auth_mode and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = auth_mode  # before `import ray`: Ray reads it when it loads
    import ray

    _quiet_ray()
    try:
        ray.init(address=address, namespace="aana", logging_level=logging.ERROR, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise Unreachable(f"no Ray cluster answers at {address}: {exc}") from None


def disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def auth_mode() -> str | None:
    """The RAY_AUTH_MODE this driver ended up with (ray.init sets it when it turns token auth on)."""
    return os.environ.get("RAY_AUTH_MODE")


def gcs_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def cpu_count() -> float:
    import ray

    return ray.cluster_resources().get("CPU", 0.0)


def resource_warnings(plan: AppPlan) -> list[str]:
    """What the connected cluster cannot hold at the top of the plan's autoscaling ranges (the app still starts)."""
    import ray

    resources = ray.cluster_resources()
    return scaling_warnings(plan, resources.get("CPU", 0.0), resources.get("GPU", 0.0))


def resource_problems(plan: AppPlan) -> list[str]:
    """What the connected cluster lacks for the plan (Ray would leave such a deployment pending forever)."""
    import ray

    resources = ray.cluster_resources()
    return (
        gpu_problems(plan, resources.get("GPU", 0.0), "the Ray cluster")
        + cpu_problems(plan, resources.get("CPU", 0.0))
        + custom_resource_problems(plan, resources)
    )


def deploy(plan: AppPlan, recording: Recording | None = None) -> None:
    """Start Serve's HTTP proxy on the plan's host and port and submit the app; returns without waiting."""
    from ray import serve

    from runtime.app import build_app

    serve.start(http_options={"host": plan.host, "port": plan.port}, logging_config={"log_level": "WARNING"})
    _forget_drain(plan.app_name)
    _remember_front(plan)
    target = serve.RunTarget(build_app(plan, recording), name=plan.app_name, route_prefix="/")
    serve.run_many([target], wait_for_applications_running=False)


def _name(value: Any) -> str:
    """Ray hands back enums or their string values depending on the call; aana wants the plain name."""
    return str(getattr(value, "value", value))


def read_progress(app_name: str, started: float) -> Progress:
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return Progress("NOT_STARTED", time.monotonic() - started, [])
    deployments = [
        DeploymentProgress(
            name=name,
            status=_name(d.status),
            replicas={_name(k): v for k, v in (d.replica_states or {}).items()},
            message=d.message or "",
        )
        for name, d in app.deployments.items()
    ]
    return Progress(_name(app.status), time.monotonic() - started, deployments)


def _add_startup_steps(progress: Progress, app_name: str) -> Progress:
    """Each deployment that is not yet healthy gets the start-up step its replicas report, for `aana up` to show
    (read only while an app deploys: a drain, which polls Serve too, has no use for it)."""
    steps = _startup_steps(app_name)
    for d in progress.deployments:
        if d.status != "HEALTHY" and d.name in steps:
            d.step, d.step_s = steps[d.name]
    return progress


def _startup_steps(app_name: str) -> dict[str, tuple[str, float]]:
    """Model name -> the latest start-up step any of its starting replicas reported (`runtime.app.StartupSteps`)
    and how long it has taken so far."""
    import json

    from ray.exceptions import RayError
    from ray.experimental import internal_kv

    from runtime.app import KV_NAMESPACE, steps_prefix

    latest: dict[str, tuple[float, str]] = {}
    prefix = steps_prefix(app_name)
    try:
        for key in internal_kv._internal_kv_list(prefix, namespace=KV_NAMESPACE):
            raw = internal_kv._internal_kv_get(key, namespace=KV_NAMESPACE)
            if not raw:
                continue  # the replica finished its start meanwhile
            model = key[len(prefix) :].decode().split("/", 1)[0]
            report = json.loads(raw)
            if report["at"] > latest.get(model, (0.0, ""))[0]:
                latest[model] = (report["at"], report["step"])
    except (RayError, OSError, ValueError, KeyError):
        return {}  # progress without steps is still progress
    now = time.time()
    return {model: (step, max(0.0, now - at)) for model, (at, step) in latest.items()}


def wait_until_running(plan: AppPlan, timeout_s: float, on_progress: Callable[[Progress], None]) -> Progress:
    started = time.monotonic()
    while True:
        progress = _add_startup_steps(read_progress(plan.app_name, started), plan.app_name)
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
        if d.status != "HEALTHY" and d.message:
            lines.append(f"  {d.name}: {_last_error(d.message)}")
    return "\n".join(lines)


def _last_error(message: str) -> str:
    """Ray's message holds a whole traceback; the user needs its last line (the exception) and the summary."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    if len(lines) <= 2:
        return " ".join(lines)
    return f"{lines[0]} ... {lines[-1].strip()}"


def app_names() -> list[str]:
    """The Serve apps on the connected cluster that are not being deleted."""
    from ray import serve

    return [name for name, app in serve.status().applications.items() if _name(app.status) != "DELETING"]


def app_exists(app_name: str) -> bool:
    return app_name in app_names()


def drain(app_name: str, timeout_s: float) -> int:
    """Make every ingress replica of the app refuse new requests (503), wait up to timeout_s for the requests in
    flight on all of them; return how many are left."""
    from ray.exceptions import RayError
    from ray.experimental import internal_kv

    from runtime.app import KV_NAMESPACE, drain_key

    deadline = time.monotonic() + timeout_s
    try:
        internal_kv._internal_kv_put(drain_key(app_name), b"1", namespace=KV_NAMESPACE)
        while True:
            acknowledged, in_flight = _ingress_reports(app_name)
            if acknowledged >= _running_ingress_replicas(app_name) and in_flight == 0:
                return 0
            if time.monotonic() > deadline:
                return in_flight
            time.sleep(0.2)
    except RayError as exc:
        logging.getLogger("aana").warning("could not drain %s: %s", app_name, exc)
        return 0


REPORT_STALE_S = 3.0  # ingress replicas report every REPORT_INTERVAL_S (0.2 s); an older report's replica is gone


def _ingress_reports(app_name: str) -> tuple[int, int]:
    """How many live ingress replicas have seen the drain flag, and their requests in flight."""
    import json

    from ray.experimental import internal_kv

    from runtime.app import KV_NAMESPACE, report_prefix

    acknowledged = in_flight = 0
    for key in internal_kv._internal_kv_list(report_prefix(app_name), namespace=KV_NAMESPACE):
        raw = internal_kv._internal_kv_get(key, namespace=KV_NAMESPACE)
        report = json.loads(raw) if raw else None
        if report and report["draining"] and time.time() - report["at"] < REPORT_STALE_S:
            acknowledged += 1
            in_flight += report["in_flight"]
    return acknowledged, in_flight


def _remember_front(plan: AppPlan) -> None:
    """Which deployment answers the app's HTTP, for whoever drains it later (`aana down` has no plan)."""
    from ray.experimental import internal_kv

    from runtime.app import KV_NAMESPACE, front_key

    internal_kv._internal_kv_put(front_key(plan.app_name), plan.http_deployment, namespace=KV_NAMESPACE)


def _running_ingress_replicas(app_name: str) -> int:
    """Running replicas of the deployment that serves the app's HTTP: the separate ingress, or the front model."""
    from ray.experimental import internal_kv

    from runtime.app import KV_NAMESPACE, front_key
    from runtime.plan import INGRESS_NAME

    deployments = read_progress(app_name, time.monotonic()).deployments
    front = internal_kv._internal_kv_get(front_key(app_name), namespace=KV_NAMESPACE)
    name = front.decode() if front else INGRESS_NAME
    ingress = next((d for d in deployments if d.name == name), deployments[0] if len(deployments) == 1 else None)
    return ingress.replicas.get("RUNNING", 0) if ingress else 0


def _forget_drain(app_name: str) -> None:
    """A new deployment of the app starts undrained (a previous run's flag and reports are gone)."""
    from ray.experimental import internal_kv

    from runtime.app import KV_NAMESPACE, kv_prefix

    internal_kv._internal_kv_del(kv_prefix(app_name), del_by_prefix=True, namespace=KV_NAMESPACE)


def delete_app(app_name: str) -> None:
    import ray
    from ray import serve

    from runtime.app import KV_NAMESPACE, quota_actor_name

    serve.delete(app_name)
    try:  # the keys' rate-limit counters: detached, so they outlive the replicas; they go with the app
        ray.kill(ray.get_actor(quota_actor_name(app_name), namespace=KV_NAMESPACE))
    except ValueError:  # no key of this app had limits: it never started
        pass


def shutdown(app_name: str, owned: bool) -> None:
    """Remove what `aana up` deployed. On a cluster aana did not start, other apps and Serve itself stay."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    try:
        if owned:
            serve.shutdown()
        else:
            delete_app(app_name)
    finally:
        ray.shutdown()


def read_snapshot(address: str) -> dict[str, Any]:
    """Everything `aana status` shows, from the connected cluster, in the shape of `runtime.status`."""
    import ray
    from ray.serve.context import _get_global_client

    from runtime.status import snapshot_from

    client = _get_global_client(raise_if_no_controller_running=False)
    details = client.get_serve_details() if client is not None else {}  # no controller: nothing is served
    return snapshot_from(address, ray.nodes(), ray.cluster_resources(), ray.available_resources(), details, time.time())
