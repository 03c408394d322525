"""`aana up --detach`: `up` in a background process that reports to the parent through a pipe.

The child (`aana`'s hidden child command, which calls `child_main`) gets the request as JSON in its environment, never
in its command line (it may hold a database password, and `ps` shows argv to every user). It runs
`runtime.lifecycle.up` with an observer that writes each
event as a JSON line to the pipe the parent passed it, and plain text lines to its log file. The parent replays the
events to its own observer and returns once a "serving" event arrives; a "failed" event carries the child's
problems, and a pipe that closes without either means the child died. Readiness never depends on a log's wording.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from runtime import local_apps
from runtime.cluster import DeploymentProgress, Progress, StatusChanges
from runtime.errors import LaunchError
from runtime.lifecycle import Observer, Serving, UpRequest, checked_plan, up
from runtime.spec import SpecError

_EVENTS_FD_ENV = "AANA_EVENTS_FD"
_REQUEST_ENV = "AANA_UP_REQUEST"


def up_detached(request: UpRequest, observer: Observer, command: list[str]) -> Serving:
    """Start `up` in a background process; return once it serves, forwarding its progress to `observer`.

    `command` starts the child: the `aana` script's hidden child command, so the child's imports never depend on the
    current directory (as `python -m` would).
    """
    plan, address = checked_plan(request)
    log = local_apps.log_path(plan.app_name)
    child_request = replace(request, spec_path=str(Path(request.spec_path).resolve()), host=plan.host,
                            port=plan.port, address=address)  # fmt: skip
    read_fd, write_fd = os.pipe()
    with log.open("w") as out:
        child = subprocess.Popen(
            command,
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            pass_fds=(write_fd,),
            env=os.environ
            | {
                "AANA_LOG_FILE": str(log),
                _EVENTS_FD_ENV: str(write_fd),
                _REQUEST_ENV: json.dumps(asdict(child_request)),
                "PYTHONUNBUFFERED": "1",
            },
        )  # fmt: skip
    os.close(write_fd)
    deadline = time.monotonic() + request.timeout_s + 60
    try:
        for event in _read_events(read_fd, deadline):
            kind = event.pop("kind")
            if kind == "serving":
                return Serving(**(event | {"pid": child.pid, "log": str(log)}))
            if kind == "failed":
                _wait(child, 60)
                raise LaunchError(*event["problems"], f"its log is {log}")
            _replay(kind, event, observer)
    finally:
        os.close(read_fd)
    if time.monotonic() >= deadline:
        child.send_signal(signal.SIGTERM)
        raise LaunchError(f"not serving after {request.timeout_s:g} s; stopped it. Its log is {log}")
    code = _wait(child, 60)  # the pipe closed first: the child is on its way out
    raise LaunchError(f"aana up exited with code {code} before serving; its log is {log}:", *_tail(log))


def _wait(child: subprocess.Popen, timeout_s: float) -> int | None:
    try:
        return child.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return None


def _tail(log: Path, lines: int = 5) -> list[str]:
    text = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return [f"  {line}" for line in text[-lines:]]


def _read_events(fd: int, deadline: float) -> Iterator[dict[str, Any]]:
    """JSON lines from the child until it closes the pipe or the deadline passes. Reads the raw descriptor: a
    buffered reader could hold a second line that select() would then never report."""
    pending = b""
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)


def _replay(kind: str, event: dict[str, Any], observer: Observer) -> None:
    if kind == "progress":
        deployments = [DeploymentProgress(**d) for d in event["deployments"]]
        observer.progress(Progress(event["app_status"], event["elapsed_s"], deployments))
    elif kind in ("step", "info", "warning"):
        getattr(observer, kind)(event["message"])


class _Channel:
    """The child's end of the pipe: each observer event as one JSON line. A parent that stopped listening (it
    returns once the app serves) is not an error."""

    def __init__(self, fd: int):
        self.stream = os.fdopen(fd, "w", encoding="utf-8")

    def send(self, kind: str, **data: Any) -> None:
        if self.stream is None:
            return
        try:
            self.stream.write(json.dumps({"kind": kind, **data}) + "\n")
            self.stream.flush()
        except OSError:
            self.stream = None

    def step(self, message: str) -> None:
        self.send("step", message=message)

    def info(self, message: str) -> None:
        self.send("info", message=message)

    def warning(self, message: str) -> None:
        self.send("warning", message=message)

    def progress(self, progress: Progress) -> None:
        self.send("progress", **asdict(progress))

    def serving(self, serving: Serving) -> None:
        self.send("serving", **asdict(serving))


class _LogLines:
    """Plain text lines for the detached child's log file."""

    def __init__(self) -> None:
        self.changes = StatusChanges()

    def step(self, message: str) -> None:
        print(f"{message} ...", flush=True)

    def info(self, message: str) -> None:
        print(message, flush=True)

    def warning(self, message: str) -> None:
        print(f"warning: {message}", flush=True)

    def progress(self, progress: Progress) -> None:
        for line in self.changes.lines(progress):
            print(line, flush=True)

    def serving(self, serving: Serving) -> None:
        print(f"aana is serving app {serving.app} at {serving.base_url}/v1 (models: {', '.join(serving.models)})",
              flush=True)  # fmt: skip


class _Both:
    def __init__(self, *observers: Any):
        self.observers = observers

    def __getattr__(self, name: str) -> Callable[..., None]:
        def call(*args: Any) -> None:
            for observer in self.observers:
                getattr(observer, name)(*args)

        return call


def child_main() -> int:
    """The detached child: run `up` and report to the parent's pipe; returns the exit code."""
    request = UpRequest(**json.loads(os.environ.pop(_REQUEST_ENV)))
    channel = _Channel(int(os.environ.pop(_EVENTS_FD_ENV)))
    try:
        up(request, _Both(_LogLines(), channel))
    except (LaunchError, SpecError) as exc:
        problems = exc.problems if isinstance(exc, LaunchError) else [str(exc)]
        for problem in problems:
            print(f"error: {problem}", flush=True)
        channel.send("failed", problems=problems)
        return exc.exit_code if isinstance(exc, LaunchError) else 1
    return 0
