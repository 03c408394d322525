"""`aana up` (foreground and --detach), `aana down` and `aana status`: the flows, with their renders and exit codes.

Domain errors arrive as LaunchError/SpecError from `runtime`; here they become a message on stderr and an exit code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import typer

from aana_cli import console
from runtime import state
from runtime.launcher import LaunchError, Unreachable
from runtime.plan import AppPlan, local_path_problems
from runtime.status import EXIT_NOTHING, EXIT_UNREACHABLE

APP_WATCH_INTERVAL_S = 2.0


@dataclass(frozen=True)
class UpOptions:
    address: str | None
    timeout_s: float
    drain_timeout_s: float


def fail(problems: list[str], code: int = 1) -> None:
    for problem in problems:
        console.error(problem)
    raise typer.Exit(code)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def prepare_database(plan: AppPlan, spec_path: Path, cli_url: str | None, migrate: bool) -> str:
    """The database URL to use, checked to be at the current schema (or brought there with --migrate)."""
    from runtime.store import migrate as migrations
    from runtime.store.errors import StoreError

    url, source = migrations.resolve_database_url(cli_url, plan.database_url)
    try:
        if migrate:
            for revision in migrations.upgrade(url):
                console.err.print(f"database: applied {revision.rev} ({revision.description})")
        else:
            migrations.require_current(url, migrations.migrate_command(url, source, str(spec_path)))
    except StoreError as exc:
        fail([str(exc)])
    return url


def up_foreground(plan: AppPlan, options: UpOptions, spec_path: Path, cli_url: str | None, migrate: bool) -> None:
    from runtime import launcher
    from runtime.store import runs

    address = options.address
    problems = launcher.preflight(plan, embedded=address is None) + [str(p) for p in local_path_problems(plan)]
    if problems:
        fail(problems)
    database_url = prepare_database(plan, spec_path, cli_url, migrate)
    serving = False
    run_id = None
    outcome, error = "failed", None
    try:
        with console.err.status("starting Ray" if address is None else f"connecting to Ray at {address}"):
            launcher.start_ray(plan, address)
        run_id = _record(runs.record_start, database_url, plan.app_name, spec_path.read_text(),
                         launcher.gcs_address(), plan.base_url)  # fmt: skip
        plan = replace(plan, database_url=database_url, run_id=run_id)
        # After ray.init, which installs handlers of its own: `kill` and Ctrl-C both stop cleanly, also when the
        # parent shell started us with SIGINT ignored.
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)
        if problems := launcher.check_cluster(plan):
            fail(problems)
        launcher.deploy(plan)
        with console.ProgressView() as view:
            launcher.wait_until_running(plan, options.timeout_s, view.update)
        state.save(
            state.AppRecord(
                app=plan.app_name, pid=os.getpid(), ray_address=launcher.gcs_address(), base_url=plan.base_url,
                models=plan.model_ids, started_at=time.time(), owns_ray=address is None,
                log=os.environ.get("AANA_LOG_FILE"), ray_auth_mode=launcher.auth_mode(), deployment_id=run_id,
                database_url=database_url,
            )
        )  # fmt: skip
        if run_id:
            _record(runs.record_state, database_url, run_id, "running")
        console.ready_banner(plan)
        serving = True
        outcome = "stopped"
        while launcher.app_exists(plan.app_name):
            time.sleep(APP_WATCH_INTERVAL_S)
        console.err.print(f"app {plan.app_name} was removed from Ray Serve; exiting")
    except LaunchError as exc:
        error = str(exc)
        fail([error])
    except KeyboardInterrupt:
        if not serving:
            outcome, error = "failed", "interrupted before the app was ready"
            console.err.print("interrupted before the app was ready; stopping ...")
            raise typer.Exit(130) from None
        console.err.print(f"stopping: draining requests in flight (up to {options.drain_timeout_s:g} s) ...")
        left = launcher.drain(plan.app_name, options.drain_timeout_s)
        if left:
            console.warning(f"{left} request(s) still in flight after {options.drain_timeout_s:g} s; cutting them off")
    finally:
        launcher.shutdown(plan, owned=address is None)
        state.remove(plan.app_name, os.getpid())
        if run_id:
            _record(runs.record_stop, database_url, run_id, outcome, error)
        console.err.print("stopped")


def _record(write, *args):
    """Run history is worth keeping but never worth failing a serving app over: warn and go on."""
    from runtime.store.errors import StoreError

    try:
        return write(*args)
    except StoreError as exc:
        console.warning(f"could not write to the database: {exc}")
        return None


def up_detached(plan: AppPlan, child_args: list[str], options: UpOptions) -> None:
    """Run `aana up` (without --detach) as a background process, wait until it serves or fails, then return."""
    from runtime import launcher

    problems = launcher.preflight(plan, embedded=options.address is None) + [
        str(p) for p in local_path_problems(plan)
    ]
    if problems:
        fail(problems)
    log = state.log_path(plan.app_name)
    aana = Path(sys.executable).parent / "aana"
    command = [str(aana) if aana.exists() else "aana", "up", *child_args]
    with log.open("w") as out:
        child = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env=os.environ | {"AANA_LOG_FILE": str(log), "PYTHONUNBUFFERED": "1", "COLUMNS": "120"},
        )  # fmt: skip
    shown = 0
    deadline = time.monotonic() + options.timeout_s + 60
    while True:
        text = log.read_text(errors="replace")
        lines = text.splitlines()
        for line in lines[shown:]:
            if not line.startswith(("aana is serving", "models:", "try:")):
                console.err.print(line, markup=False, highlight=False)
        shown = len(lines)
        if "aana is serving" in text and state.load(plan.app_name):
            break
        if child.poll() is not None:
            fail([f"aana up exited with code {child.returncode} before serving; its log is {log}"])
        if time.monotonic() > deadline:
            child.send_signal(signal.SIGTERM)
            fail([f"not serving after {options.timeout_s:g} s; stopped it. Its log is {log}"])
        time.sleep(0.3)
    console.ready_banner(plan, detached_pid=child.pid, log=str(log))


def _pick_record(app_name: str | None) -> state.AppRecord | None:
    records = state.running()
    if app_name:
        return next((r for r in records if r.app == app_name), None)
    if len(records) > 1:
        fail(
            [f"several apps are running ({', '.join(r.app for r in records)}); name one with --app"],
            code=2,
        )
    return records[0] if records else None


def down(app_name: str | None, address: str | None, drain_timeout_s: float) -> None:
    from runtime import launcher

    record = _pick_record(app_name)
    target = address or (record.ray_address if record else "auto")
    try:
        launcher.connect(target, record.ray_auth_mode if record and not address else None)
    except Unreachable as exc:
        if address:
            fail([str(exc)], code=EXIT_UNREACHABLE)
        fail(["nothing is running: no local Ray cluster answers"], code=EXIT_NOTHING)
    name = app_name or (record.app if record else _only_app(launcher))
    if not launcher.app_exists(name):
        launcher.disconnect()
        fail([f"no app named {name!r} is running on {target}"], code=EXIT_NOTHING)
    console.err.print(f"draining {name} (up to {drain_timeout_s:g} s) ...")
    left = launcher.drain(name, drain_timeout_s)
    if left:
        console.warning(f"{left} request(s) still in flight after {drain_timeout_s:g} s; cutting them off")
    if record and record.app == name and state.pid_alive(record.pid):
        launcher.disconnect()
        os.kill(record.pid, signal.SIGTERM)  # its own shutdown removes the app and stops the Ray it started
        _wait_for_exit(record.pid, timeout_s=drain_timeout_s + 60)
    else:
        launcher.delete_app(name)
        launcher.disconnect()
    console.out.print(f"stopped {name}")


def _only_app(launcher) -> str:
    from ray import serve

    apps = list(serve.status().applications)
    if len(apps) != 1:
        launcher.disconnect()
        fail(
            ["nothing is running on this cluster"] if not apps else
            [f"several apps are running ({', '.join(apps)}); name one with --app"],
            code=EXIT_NOTHING if not apps else 2,
        )  # fmt: skip
    return apps[0]


def _wait_for_exit(pid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while state.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if state.pid_alive(pid):
        fail([f"aana up (pid {pid}) did not stop within {timeout_s:g} s"])


def status(address: str | None, as_json: bool, database_url: str | None) -> None:
    import json

    from runtime import launcher
    from runtime.status import exit_code, read_snapshot

    records = state.running()
    target = address or (records[0].ray_address if records else "auto")
    try:
        launcher.connect(target, records[0].ray_auth_mode if records and not address else None)
    except Unreachable as exc:
        if address:
            _status_unreachable(str(exc), as_json, EXIT_UNREACHABLE)
        _status_unreachable("nothing is running: no local Ray cluster answers", as_json, EXIT_NOTHING)
    try:
        snapshot = read_snapshot(target)
    finally:
        launcher.disconnect()
    _add_request_stats(snapshot, records, database_url)
    if as_json:
        console.out.print_json(json.dumps(snapshot))
    else:
        console.status_view(snapshot)
    raise typer.Exit(exit_code(snapshot))


STATS_WINDOW_S = 3600.0


def _add_request_stats(snapshot: dict, records: list[state.AppRecord], cli_url: str | None) -> None:
    """Per-model request figures of the last hour, from the database the app records into."""
    from datetime import datetime, timedelta, timezone

    from runtime.store import runs
    from runtime.store.db import resolve_database_url
    from runtime.store.errors import StoreError

    by_app = {r.app: r for r in records}
    since = datetime.now(timezone.utc) - timedelta(seconds=STATS_WINDOW_S)
    for app in snapshot["apps"]:
        record = by_app.get(app["name"])
        url = cli_url or (record.database_url if record else None) or resolve_database_url(None, None)[0]
        try:
            stats = runs.request_stats(url, since, record.deployment_id if record else None)
        except StoreError as exc:
            console.warning(f"request figures unavailable: {exc}")
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


def _status_unreachable(message: str, as_json: bool, code: int) -> None:
    if as_json:
        import json

        console.out.print_json(json.dumps({"error": message, "exit_code": code}))
        raise typer.Exit(code)
    fail([message], code=code)
