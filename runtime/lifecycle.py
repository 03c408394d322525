"""The life of an app: `up` (in the foreground, or detached in a child process), `down` and `status`.

Owns the order of things (checks, database, Ray, run record, deploy, wait, serve, drain, stop), the local app
records (`runtime.local_apps`) and the run history in the database. It reports through an `Observer`, so the CLI
renders and this module never prints (`runtime.detached` runs `up` in a background process). Failures raise
`runtime.errors` types (or `runtime.spec.SpecError`), each with the exit code the CLI uses.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

from runtime import cluster, local_apps, preflight
from runtime.cluster import Progress
from runtime.errors import Ambiguous, Interrupted, LaunchError, NothingRunning, Unreachable
from runtime.plan import AppPlan, load_plan
from runtime.records import Recording

APP_WATCH_INTERVAL_S = 2.0
STATS_WINDOW_S = 3600.0


@dataclass(frozen=True)
class UpRequest:
    """What `aana up` was asked for (plain values: it travels to a detached child as JSON)."""

    spec_path: str
    address: str | None = None  # None: the spec's ray.address, else an embedded local Ray
    host: str | None = None
    port: int | None = None
    timeout_s: float = 900.0
    drain_timeout_s: float = 30.0
    database_url: str | None = None
    migrate: bool = False


@dataclass(frozen=True)
class Serving:
    """An app that serves: where, which models, and (detached) the background process and its log."""

    app: str
    base_url: str
    models: list[str]
    pid: int | None = None
    log: str | None = None


class Observer(Protocol):
    def step(self, message: str) -> None:
        """A phase begins (shown until the next event)."""

    def info(self, message: str) -> None: ...

    def warning(self, message: str) -> None: ...

    def progress(self, progress: Progress) -> None:
        """The deployments' states while the app deploys, about twice a second."""

    def serving(self, serving: Serving) -> None: ...


# ---------------------------------------------------------------------------------------------------------------
# up


def up(request: UpRequest, observer: Observer) -> None:
    """Deploy the spec and serve until Ctrl-C, SIGTERM or the app's removal; then drain and stop."""
    from runtime.store import runs

    plan, address = checked_plan(request)
    notice_lost_runs(observer)
    database_url = _prepare_database(plan, request, observer)
    serving, run_id = False, None
    outcome, error = "failed", None
    try:
        if address is None:
            _convert_weights(plan, observer)
        observer.step("starting Ray" if address is None else f"connecting to Ray at {address}")
        cluster.start_ray(plan, address)
        spec_text = Path(request.spec_path).read_text(encoding="utf-8")
        run_id = _record(observer, runs.record_start, database_url, plan.app_name, spec_text, cluster.gcs_address(),
                         plan.base_url)  # fmt: skip
        # After ray.init, which installs handlers of its own: `kill` and Ctrl-C both stop cleanly, also when the
        # parent shell started us with SIGINT ignored.
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)
        plan = plan.with_ingress_replicas(cluster.cpu_count())
        if problems := cluster.resource_problems(plan):
            raise LaunchError(*problems)
        for warning in cluster.resource_warnings(plan):
            observer.warning(warning)
        cluster.deploy(plan, Recording(database_url, run_id))
        cluster.wait_until_running(plan, request.timeout_s, observer.progress)
        local_apps.save(
            local_apps.AppRecord(
                app=plan.app_name, pid=os.getpid(), ray_address=cluster.gcs_address(), base_url=plan.base_url,
                models=plan.model_ids, started_at=time.time(), owns_ray=address is None,
                log=os.environ.get("AANA_LOG_FILE"), ray_auth_mode=cluster.auth_mode(), run_id=run_id,
                database_url=database_url,
            )
        )  # fmt: skip
        if run_id:
            _record(observer, runs.record_state, database_url, run_id, "running")
        observer.serving(Serving(plan.app_name, plan.base_url, plan.model_ids))
        serving, outcome = True, "stopped"
        while cluster.app_exists(plan.app_name):
            time.sleep(APP_WATCH_INTERVAL_S)
        observer.info(f"app {plan.app_name} was removed from Ray Serve; exiting")
    except LaunchError as exc:
        error = str(exc)
        raise
    except KeyboardInterrupt:
        if not serving:
            error = "interrupted before the app was ready"
            observer.info("interrupted before the app was ready; stopping ...")
            raise Interrupted(error) from None
        observer.info(f"stopping: draining requests in flight (up to {request.drain_timeout_s:g} s) ...")
        if left := cluster.drain(plan.app_name, request.drain_timeout_s):
            observer.warning(f"{left} request(s) still in flight after {request.drain_timeout_s:g} s; cutting them off")
    finally:
        cluster.shutdown(plan.app_name, owned=address is None)
        local_apps.remove(plan.app_name, os.getpid())
        if run_id:
            _record(observer, runs.record_stop, database_url, run_id, outcome, error)
        observer.info("stopped")


def _convert_weights(plan: AppPlan, observer: Observer) -> None:
    """Convert GGUF weights before Ray starts, as a step of its own (the replicas then load the cached folder). On
    an existing cluster each replica converts on its own node instead."""
    from runtime import weights

    for d in plan.deployments:
        if gguf := weights.pending_conversion(d.source):
            observer.step(f"{d.model_id}: converting {gguf.name} to safetensors (once; later starts reuse it)")
            try:
                weights.convert_in_subprocess(gguf)
            except RuntimeError as exc:
                raise LaunchError(f"deployment {d.model_id!r}: {exc}") from None


def checked_plan(request: UpRequest) -> tuple[AppPlan, str | None]:
    plan = load_plan(request.spec_path, request.host, request.port)
    address = request.address or plan.ray_address
    if problems := preflight.problems(plan, embedded=address is None):
        raise LaunchError(*problems)
    return plan, address


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _prepare_database(plan: AppPlan, request: UpRequest, observer: Observer) -> str:
    """The database URL to use, checked to be at the current schema (or brought there with --migrate)."""
    from runtime.store import migrate as migrations
    from runtime.store.errors import StoreError

    url, source = migrations.resolve_database_url(request.database_url, plan.database_url)
    try:
        if request.migrate:
            for revision in migrations.upgrade(url):
                observer.info(f"database: applied {revision.rev} ({revision.description})")
        else:
            migrations.require_current(url, migrations.migrate_command(url, source, request.spec_path))
    except StoreError as exc:
        raise LaunchError(str(exc)) from None
    return url


def _record(observer: Observer, write: Callable[..., Any], *args: Any) -> Any:
    """Run history is worth keeping but never worth failing a serving app over: warn and go on."""
    from runtime.store.errors import StoreError

    try:
        return write(*args)
    except StoreError as exc:
        observer.warning(f"could not write to the database: {exc}")
        return None


# ---------------------------------------------------------------------------------------------------------------
# down and status


def down(app_name: str | None, address: str | None, drain_timeout_s: float, observer: Observer) -> str:
    """Drain and stop an app; return its name. The `aana up` that owns it stops the Ray it started."""
    record = _pick_record(app_name)
    target = address or (record.ray_address if record else "auto")
    _connect(target, record.ray_auth_mode if record and not address else None, explicit=address is not None)
    try:
        name = app_name or (record.app if record else _only_app())
        if not cluster.app_exists(name):
            raise NothingRunning(f"no app named {name!r} is running on {target}")
        observer.info(f"draining {name} (up to {drain_timeout_s:g} s) ...")
        if left := cluster.drain(name, drain_timeout_s):
            observer.warning(f"{left} request(s) still in flight after {drain_timeout_s:g} s; cutting them off")
        if record and record.app == name and local_apps.pid_alive(record.pid):
            cluster.disconnect()
            os.kill(record.pid, signal.SIGTERM)  # its own shutdown removes the app and stops the Ray it started
            _wait_for_exit(record.pid, timeout_s=drain_timeout_s + 60)
        else:
            cluster.delete_app(name)
    finally:
        cluster.disconnect()
    return name


def status(address: str | None, database_url: str | None, observer: Observer) -> dict[str, Any]:
    """The `runtime.status` snapshot of the cluster, with each app's request figures of the last hour."""
    notice_lost_runs(observer)
    records = local_apps.running()
    target = address or (records[0].ray_address if records else "auto")
    _connect(target, records[0].ray_auth_mode if records and not address else None, explicit=address is not None)
    try:
        snapshot = cluster.read_snapshot(target)
    finally:
        cluster.disconnect()
    _add_request_stats(snapshot, records, database_url, observer)
    return snapshot


def notice_lost_runs(observer: Observer) -> None:
    """Runs whose `aana up` died (kill -9, a crash) together with its Ray: mark them lost in the database, noting
    when, and forget their local records. A run whose cluster still answers may still be serving: left alone."""
    from runtime.store import runs
    from runtime.store.db import resolve_database_url
    from runtime.store.errors import StoreError

    for record in local_apps.stale():
        if _answers(record.ray_address):
            continue
        if record.run_id:
            url = record.database_url or resolve_database_url(None, None)[0]
            reason = f"aana up (pid {record.pid}) and its Ray at {record.ray_address} ended without stopping the run"
            try:
                if runs.mark_lost(url, record.run_id, reason):
                    observer.warning(f"app {record.app}: {reason}; marked run {record.run_id} lost")
            except StoreError as exc:
                observer.warning(f"could not mark run {record.run_id} lost: {exc}")
                continue
        local_apps.remove(record.app, record.pid)


def _answers(address: str) -> bool:
    """Whether something listens at a Ray GCS address (host:port); no Ray import, no waiting on a dead host."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
            return True
    except (OSError, ValueError):
        return False


def _connect(target: str, auth_mode: str | None, explicit: bool) -> None:
    try:
        cluster.connect(target, auth_mode)
    except Unreachable:
        if explicit:
            raise
        raise NothingRunning("nothing is running: no local Ray cluster answers") from None


def _pick_record(app_name: str | None) -> local_apps.AppRecord | None:
    records = local_apps.running()
    if app_name:
        return next((r for r in records if r.app == app_name), None)
    if len(records) > 1:
        raise Ambiguous(f"several apps are running ({', '.join(r.app for r in records)}); name one with --app")
    return records[0] if records else None


def _only_app() -> str:
    apps = cluster.app_names()
    if not apps:
        raise NothingRunning("nothing is running on this cluster")
    if len(apps) > 1:
        raise Ambiguous(f"several apps are running ({', '.join(apps)}); name one with --app")
    return apps[0]


def _wait_for_exit(pid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while local_apps.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if local_apps.pid_alive(pid):
        raise LaunchError(f"aana up (pid {pid}) did not stop within {timeout_s:g} s")


def _add_request_stats(
    snapshot: dict, records: list[local_apps.AppRecord], cli_url: str | None, observer: Observer
) -> None:
    """Per-model request figures of the last hour, from the database the app records into."""
    from runtime.store import runs
    from runtime.store.db import resolve_database_url
    from runtime.store.errors import StoreError

    by_app = {r.app: r for r in records}
    since = datetime.now(timezone.utc) - timedelta(seconds=STATS_WINDOW_S)
    for app in snapshot["apps"]:
        record = by_app.get(app["name"])
        url = cli_url or (record.database_url if record else None) or resolve_database_url(None, None)[0]
        try:
            stats = runs.request_stats(url, since, record.run_id if record else None)
        except StoreError as exc:
            observer.warning(f"request figures unavailable: {exc}")
            continue
        app["requests"] = {
            s.model: {
                "count": s.count,
                "errors": s.errors,
                "ttft_ms": {"p50": s.ttft_p50_ms, "p95": s.ttft_p95_ms},
                "latency_ms": {"p50": s.latency_p50_ms, "p95": s.latency_p95_ms},
            }
            for s in stats
            if s.model in app["models"]
        }
