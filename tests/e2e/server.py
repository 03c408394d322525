"""Run `aana up` as a real subprocess, as a user would, and stop it with Ctrl-C (SIGINT).

`serving(spec, folder)` is the one way a test serves a spec: it starts `aana up` on a free port, yields the server and
stops it on the way out. Helpers that read GET /health wait on what the server reports, never on a clock.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

READY = "aana is serving"


# Ports a Ray node takes by default (dashboard agent HTTP and gRPC, metrics, dashboard, GCS, client server): a test
# server on one of them loses the race to the Ray it starts.
RAY_DEFAULT_PORTS = frozenset({52365, 52366, 8265, 6379, 10001, 8076, 8077})


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in RAY_DEFAULT_PORTS:
            return port


def aana_command() -> list[str]:
    script = Path(sys.executable).parent / "aana"
    return [str(script)] if script.exists() else [shutil.which("aana") or "aana"]


class AanaServer:
    def __init__(self, spec: Path, log_dir: Path, port: int | None = None, args: tuple[str, ...] = ()):
        self.spec = spec
        self.port = port or free_port()
        self.args = args
        self.stdout_lines: list[str] = []
        self.stderr_path = log_dir / f"aana-up-{self.port}.stderr"
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 300) -> AanaServer:
        env = os.environ | {"PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
        self.process = subprocess.Popen(
            [*aana_command(), "up", str(self.spec), "--port", str(self.port), "--migrate", *self.args],
            stdout=subprocess.PIPE,
            stderr=self.stderr_path.open("w"),
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
            start_new_session=True,
        )
        ready = threading.Event()
        threading.Thread(target=self._read_stdout, args=(ready,), daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not ready.wait(0.5):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"aana up did not become ready:\n{self.output()}")
        return self

    def _read_stdout(self, ready: threading.Event) -> None:
        assert self.process and self.process.stdout
        for line in self.process.stdout:
            self.stdout_lines.append(line)
            if READY in line:
                ready.set()

    def output(self) -> str:
        return "".join(self.stdout_lines) + "\n--- stderr ---\n" + self.stderr_path.read_text()

    def stop(self, timeout_s: float = 60) -> int:
        return interrupt(self.process, timeout_s) if self.process is not None else 0


def interrupt(process: subprocess.Popen, timeout_s: float = 60) -> int:
    """Ctrl-C, as a person would; kill the process group only if it does not stop in time. The exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


@contextmanager
def serving(spec: Path, log_dir: Path, args: tuple[str, ...] = (), timeout_s: float = 300) -> Iterator[AanaServer]:
    """`aana up SPEC` for the duration of the block; Ctrl-C on the way out.

    A clean exit (code 0) is asserted only when the block passed: when it failed, the server is still stopped, but the
    test reports the block's own failure, not a consequence of it.
    """
    server = AanaServer(spec, log_dir, args=args).start(timeout_s=timeout_s)
    try:
        yield server
    except BaseException:
        server.stop()
        raise
    code = server.stop()
    assert code == 0, f"aana up exited with {code} when stopped:\n{server.output()}"


def model_load(server: AanaServer, model: str) -> dict:
    """What GET /health says `model` is doing now, e.g. {"status": "ready", "running": 1, "waiting": 0}."""
    health = httpx.get(f"{server.base_url}/health", timeout=30)
    return health.json()["models"][model]


def wait_until_idle(server: AanaServer, model: str, hang_guard_s: float = 60) -> None:
    """Until GET /health reports that `model` runs and queues nothing.

    hang_guard_s only stops a test that would otherwise wait forever; callers pick requests that would keep the
    engine busy far longer if they were not stopped, so reaching idle in time is never a race.
    """
    deadline = time.monotonic() + hang_guard_s
    load = model_load(server, model)
    while any(v for k, v in load.items() if k != "status"):
        if time.monotonic() > deadline:
            raise AssertionError(f"{model} still busy after {hang_guard_s:g} s: {load}\n{server.output()}")
        time.sleep(0.2)
        load = model_load(server, model)


def run_aana(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*aana_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=os.environ | {"COLUMNS": "120"},
        stdin=subprocess.DEVNULL,
    )
