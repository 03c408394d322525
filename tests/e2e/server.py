"""Run `aana up` as a real subprocess, as a user would, and stop it with Ctrl-C (SIGINT)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

READY = "aana is serving"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        """Ctrl-C, as a person would; kill the process group only if it does not stop in time."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def run_aana(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*aana_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=os.environ | {"COLUMNS": "120"},
        stdin=subprocess.DEVNULL,
    )
