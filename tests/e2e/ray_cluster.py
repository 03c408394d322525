"""Ray clusters started here with `ray start`, as an operator would start them: a head and, for multi-node tests,
more nodes on this machine (each its own raylet, with resources of its own). Each runs under its own process group:
stopping one kills that group only, never `ray stop` (which would stop every Ray on the machine)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from e2e.server import free_port

CLUSTER_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def bin_path(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@contextmanager
def ray_head(log: Path, env: dict[str, str], dashboard: bool = True, num_cpus: float = 2,
             resources: dict[str, float] | None = None) -> Iterator[tuple[str, str]]:  # fmt: skip
    """A head node; yields (its GCS address for `--address`, the dashboard's URL or "" without one)."""
    port, dashboard_port = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    command = [
        bin_path("ray"), "start", "--head", "--block", f"--num-cpus={num_cpus:g}", f"--port={port}",
        f"--include-dashboard={'true' if dashboard else 'false'}", f"--dashboard-port={dashboard_port}",
        "--dashboard-host=127.0.0.1", f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
        f"--temp-dir={temp_dir}", "--disable-usage-stats", f"--resources={json.dumps(resources or {})}",
    ]  # fmt: skip
    process = _start(command, log, env)
    gcs = f"127.0.0.1:{port}"
    url = f"http://127.0.0.1:{dashboard_port}" if dashboard else ""
    try:
        ready = (lambda: answers(f"{url}/api/version")) if dashboard else (lambda: node_ids(gcs, env))
        wait_for(ready, "the head node", 90, lambda: _exited(process, log))
        yield gcs, url
    finally:
        stop_group(process)
        shutil.rmtree(temp_dir, ignore_errors=True)


class RayNode:
    """A further node of a cluster on this machine, with resources of its own; `stop()` takes it away as a machine
    that fails would (its raylet and workers die), `start()` brings a new one with the same resources."""

    def __init__(self, gcs: str, log: Path, env: dict[str, str], num_cpus: float, resources: dict[str, float]):
        self.gcs, self.log, self.env = gcs, log, env
        self.command = [
            bin_path("ray"), "start", f"--address={gcs}", "--block", f"--num-cpus={num_cpus:g}",
            f"--resources={json.dumps(resources)}", f"--metrics-export-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats",
        ]  # fmt: skip
        self.resources = resources
        self.process: subprocess.Popen | None = None

    def start(self) -> RayNode:
        before = set(node_ids(self.gcs, self.env))
        self.process = _start(self.command, self.log, self.env)
        wait_for(lambda: set(node_ids(self.gcs, self.env)) - before, "the new node joining", 90,
                 lambda: _exited(self.process, self.log))  # fmt: skip
        return self

    @property
    def node_id(self) -> str:
        [node] = node_ids(self.gcs, self.env, resource=next(iter(self.resources)))
        return node

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)


def node_ids(gcs: str, env: dict[str, str], resource: str | None = None) -> list[str]:
    """The alive nodes of the cluster (those with `resource`), asked from a short-lived driver."""
    wanted = "True" if resource is None else f"n['Resources'].get({resource!r})"
    script = (
        f"import json, ray; ray.init(address={gcs!r}, logging_level='ERROR'); "
        f"print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive'] and {wanted}]))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else []


def _start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        command, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip


def _exited(process: subprocess.Popen | None, log: Path) -> str:
    code = process.poll() if process is not None else None
    return f"ray start exited with {code}:\n{log.read_text()}" if code is not None else log.read_text()[-4000:]


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the node's process group (ray start, GCS, raylet, workers), SIGKILL if it lingers."""
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            process.poll()  # reap the leader: a zombie would keep the group alive
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def wait_for(predicate, what: str, timeout_s: float, diagnose) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not within {timeout_s:g} s:\n{diagnose()}"
        time.sleep(0.5)
