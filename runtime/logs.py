"""An app's replica and ingress logs, from any terminal: found, read and followed through Ray's per-node log service.

Ray Serve writes one file per replica, `logs/serve/replica_<app>_<deployment>_<replica>.log` in the session folder of
the node the replica runs on: the access log of each request (`POST /v1/chat/completions 200 6.6ms`, with the
request's X-Request-ID), start and stop notices, and whatever the replica logs through the `ray.serve` logger.

How they are read, and why: every Ray node runs a dashboard agent whose gRPC `LogService` (ListLogs, StreamLog with
keep-alive) is what Ray's own state API (`ray.util.state.get_log`) calls behind the dashboard. aana calls it directly,
at the address the GCS node table gives (`NodeManagerAddress`, `MetricsAgentPort`), so it works on the embedded
cluster, which `aana up` starts without the dashboard, and on remote nodes of `--address` clusters alike. Measured
on a 2-core machine (Ray 2.60): turning the dashboard on instead would add ~960 MB RSS (ten ~90 MB module processes
beside the head) and 1-4 s to each start, and the state API then failed (HTTP 500) in 3 of 4 starts whenever another
Ray ran on the machine: the agent's fixed HTTP port (52365) was taken, so the agent never registered in the GCS and
the dashboard could not find it. Reading the session folder directly would reach only this machine's nodes.

The limit: the machine that runs `aana logs` must reach each node's agent port (a firewall, or a cluster reached only
through `ray://`, can stop it); such a node is reported with its address, the others are still read. The service and
the node-table field are Ray internals (as of Ray 2.60; the e2e test pins them), used in `_Agent` and `_nodes` alone.
Timestamps are the node's local time, as Serve writes them; `since` is compared with them as such.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from runtime import cluster, lifecycle
from runtime.errors import LaunchError, NothingRunning, Unreachable

RESCAN_S = 2.0  # while following: how often to look for new replicas' files
KEEP_ALIVE_S = 0.25  # how often a node's agent re-reads a followed file for new bytes
RPC_TIMEOUT_S = 10.0
# `INFO 2026-12-03 18:07:29,138 lx_echo a6ow53zm ...`: Serve's text format (the JSON one carries `asctime`).
_SERVE_LINE = re.compile(r"^[A-Z]+ (\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3}) ")


@dataclass(frozen=True)
class LogLine:
    """One line of a replica's log; the lines of a multi-line record (a traceback) carry the record's time."""

    deployment: str
    replica: str
    at: datetime | None  # None: before the file's first timestamped line
    text: str


@dataclass(frozen=True)
class Node:
    node_id: str
    ip: str
    agent_port: int

    @property
    def agent(self) -> str:
        return f"{self.ip}:{self.agent_port}"


@dataclass(frozen=True)
class LogFile:
    node: Node
    name: str  # relative to the node's logs folder, e.g. serve/replica_app_echo_a6ow53zm.log
    deployment: str
    replica: str

    @property
    def live(self) -> bool:
        """The file Serve writes to now (not a rotated-away `.log.1`)."""
        return self.name.endswith(".log")


# ---------------------------------------------------------------------------------------------------------------
# pure: naming and parsing


def file_glob(app: str) -> str:
    return f"serve/replica_{app}_*.log*"


def classify(name: str, app: str, deployments: Iterable[str]) -> tuple[str, str] | None:
    """(deployment, replica id) of a Serve replica log file name of `app`, or None when it belongs to none of its
    deployments (names may hold underscores, so the known names decide; the longest match wins)."""
    base = name.rsplit("/", 1)[-1]
    stem = re.sub(r"\.log(\.\d+)?$", "", base)
    prefix = f"replica_{app}_"
    if not stem.startswith(prefix) or stem == base:
        return None
    rest = stem[len(prefix) :]
    for deployment in sorted(deployments, key=len, reverse=True):
        if rest.startswith(deployment + "_") and "_" not in (replica := rest[len(deployment) + 1 :]) and replica:
            return deployment, replica
    return None


def timestamp(line: str) -> datetime | None:
    """When a record was written, from its first line; None for a continuation line (a traceback's)."""
    if match := _SERVE_LINE.match(line):
        return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
    if line.startswith("{"):
        try:
            return datetime.strptime(json.loads(line)["asctime"], "%Y-%m-%d %H:%M:%S,%f")
        except (ValueError, KeyError, TypeError):
            return None
    return None


class LineSplitter:
    """Bytes of one file, in chunks of any size, as LogLines: a line split across chunks waits for its end, and
    continuation lines inherit the time of the record they belong to."""

    def __init__(self, deployment: str, replica: str):
        self.deployment, self.replica = deployment, replica
        self.partial = b""
        self.at: datetime | None = None

    def feed(self, data: bytes) -> list[LogLine]:
        *complete, self.partial = (self.partial + data).split(b"\n")
        return [self._line(raw) for raw in complete]

    def flush(self) -> list[LogLine]:
        """The last line of a file that does not end with a newline."""
        rest, self.partial = self.partial, b""
        return [self._line(rest)] if rest else []

    def _line(self, raw: bytes) -> LogLine:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        self.at = timestamp(text) or self.at
        return LogLine(self.deployment, self.replica, self.at, text)


def merged(per_file: Iterable[list[LogLine]], since: datetime | None = None) -> list[LogLine]:
    """The lines of several files in time order (a record's lines stay together, in their order), from `since`."""
    lines = [line for lines in per_file for line in lines]
    lines.sort(key=lambda line: line.at or datetime.min)  # stable: equal times keep each file's order
    return [line for line in lines if since is None or (line.at is not None and line.at >= since)]


# ---------------------------------------------------------------------------------------------------------------
# a node's log service


class _Agent:
    """One node's Ray agent LogService (gRPC), with Ray's own channel setup (it adds the cluster's auth token)."""

    def __init__(self, node: Node):
        from ray._private import ray_constants
        from ray._private.grpc_utils import init_grpc_channel
        from ray.core.generated import reporter_pb2_grpc

        self.node = node
        self.channel = init_grpc_channel(node.agent, options=ray_constants.GLOBAL_GRPC_OPTIONS)
        self.stub = reporter_pb2_grpc.LogServiceStub(self.channel)

    def list(self, glob: str) -> list[str]:
        from ray.core.generated import reporter_pb2

        reply = self.stub.ListLogs(reporter_pb2.ListLogsRequest(glob_filter=glob), timeout=RPC_TIMEOUT_S)
        return list(reply.log_files)

    def stream(self, name: str, start: int = 0, follow: bool = False) -> Any:
        """The file's bytes from `start` as a gRPC call that iterates chunks (`.data`); with `follow` it never ends
        until cancelled (`.cancel()`). Raises FileNotFoundError when the file is gone."""
        from ray.core.generated import reporter_pb2
        from ray.dashboard.modules.log.log_consts import LOG_GRPC_ERROR

        request = reporter_pb2.StreamLogRequest(
            log_file_name=name, lines=-1, start_offset=start, keep_alive=follow, interval=KEEP_ALIVE_S if follow else 0
        )
        call = self.stub.StreamLog(request, timeout=None if follow else RPC_TIMEOUT_S)
        error = dict(call.initial_metadata()).get(LOG_GRPC_ERROR)
        if error:
            call.cancel()
            raise FileNotFoundError(error)
        return call

    def close(self) -> None:
        self.channel.close()


def _unreachable(node: Node, exc: Exception) -> str:
    import grpc

    detail = exc.details() if hasattr(exc, "details") else str(exc)
    if hasattr(exc, "code") and exc.code() == grpc.StatusCode.UNIMPLEMENTED:
        return (
            f"node {node.node_id[:8]} ({node.ip}) runs a minimal Ray, whose agent has no log service; install "
            "ray[default] (ray[serve] includes it) on that node"
        )
    return (
        f"cannot read the logs of node {node.node_id[:8]} ({node.ip}): its Ray agent at {node.agent} did not answer "
        f"({detail}); run `aana logs` on a machine that reaches that port, e.g. the cluster's head node"
    )


# ---------------------------------------------------------------------------------------------------------------
# an app's logs


@dataclass
class AppLogs:
    """The log files of one app's deployments on every live node, read through the nodes' agents."""

    app: str
    deployments: list[str]  # the ones asked for
    nodes: list[Node]
    warnings: list[str] = field(default_factory=list)  # nodes that did not answer
    _agents: dict[str, _Agent] = field(default_factory=dict)

    def agent(self, node: Node) -> _Agent:
        if node.node_id not in self._agents:
            self._agents[node.node_id] = _Agent(node)
        return self._agents[node.node_id]

    def files(self) -> list[LogFile]:
        """Every replica log file of the app's chosen deployments, stopped replicas' included, oldest rotation
        first. Nodes that do not answer go to `warnings`; when none answers, Unreachable."""
        import grpc

        found: list[LogFile] = []
        answered = 0
        self.warnings = []
        for node in self.nodes:
            try:
                names = self.agent(node).list(file_glob(self.app))
            except grpc.RpcError as exc:
                self.warnings.append(_unreachable(node, exc))
                continue
            answered += 1
            for name in names:
                if (kind := classify(name, self.app, self.deployments)) is not None:
                    found.append(LogFile(node, name, *kind))
        if self.nodes and not answered:
            raise Unreachable(*self.warnings)
        return sorted(found, key=lambda f: (f.deployment, f.replica, _rotation(f.name)))

    def read(self, since: datetime | None = None) -> tuple[list[LogLine], dict[LogFile, int]]:
        """Every line so far, merged in time order, and how many bytes of each live file that was."""
        import grpc

        per_file, offsets = [], {}
        for log in self.files():
            splitter, size = LineSplitter(log.deployment, log.replica), 0
            try:
                lines = []
                for chunk in self.agent(log.node).stream(log.name):
                    size += len(chunk.data)
                    lines += splitter.feed(chunk.data)
            except FileNotFoundError:
                continue  # rotated away between the listing and the read
            except grpc.RpcError as exc:
                self.warnings.append(_unreachable(log.node, exc))
                continue
            # A live file's unfinished last line is printed once finished, when following.
            per_file.append(lines + ([] if log.live else splitter.flush()))
            if log.live:
                offsets[log] = size - len(splitter.partial)
        return merged(per_file, since), offsets

    def follow(self, since: datetime | None = None, rescan_s: float = RESCAN_S) -> Iterator[LogLine]:
        """The lines so far (as `read`), then new lines as replicas write them, until the caller stops iterating
        (each stream is then cancelled). Replicas that start later are picked up within `rescan_s`."""
        lines, offsets = self.read(since)
        yield from lines
        follower = _Follower(self, since)
        try:
            for log, offset in offsets.items():
                follower.start(log, offset)
            next_scan = time.monotonic() + rescan_s
            while True:
                try:
                    yield follower.lines.get(timeout=max(0.0, next_scan - time.monotonic()))
                    continue
                except queue.Empty:
                    pass
                next_scan = time.monotonic() + rescan_s
                try:
                    found = self.files()
                except Unreachable:
                    raise Unreachable(f"the cluster of {self.app} stopped answering; nothing more to follow") from None
                for log in found:
                    if log.live and log not in follower.streams:
                        follower.start(log, 0)
        finally:
            follower.stop()

    def close(self) -> None:
        for agent in self._agents.values():
            agent.close()


def _rotation(name: str) -> int:
    """`.log.2` before `.log.1` before `.log`: the order Python's rotating handler leaves them in."""
    match = re.search(r"\.log\.(\d+)$", name)
    return -int(match.group(1)) if match else 0


class _Follower:
    """A thread per followed file, each streaming from its node's agent into one queue of lines."""

    def __init__(self, logs: AppLogs, since: datetime | None):
        self.logs, self.since = logs, since
        self.lines: queue.Queue[LogLine] = queue.Queue()
        self.streams: dict[LogFile, Any] = {}

    def start(self, log: LogFile, offset: int) -> None:
        try:
            call = self.logs.agent(log.node).stream(log.name, offset, follow=True)
        except FileNotFoundError:
            return
        self.streams[log] = call
        threading.Thread(target=self._pump, args=(log, call), daemon=True, name=f"aana-logs-{log.replica}").start()

    def _pump(self, log: LogFile, call: Any) -> None:
        import grpc

        splitter = LineSplitter(log.deployment, log.replica)
        try:
            for chunk in call:
                for line in splitter.feed(chunk.data):
                    if self.since is None or (line.at is not None and line.at >= self.since):
                        self.lines.put(line)
        except grpc.RpcError:
            pass  # cancelled by stop(), or the node went away: the rescan notices

    def stop(self) -> None:
        for call in self.streams.values():
            call.cancel()


# ---------------------------------------------------------------------------------------------------------------
# finding the app


@contextmanager
def app_logs(app_name: str | None, address: str | None, model: str | None = None) -> Iterator[AppLogs]:
    """The logs of `app_name` (default: the only app running) on the cluster at `address` (default: where this
    machine's `aana up` runs it, else `auto`), optionally of one deployment. Raises NothingRunning (exit 2),
    Ambiguous (2), Unreachable (3) or LaunchError (1: no such model)."""
    record = lifecycle._pick_record(app_name)
    target = address or (record.ray_address if record else "auto")
    lifecycle._connect(target, record.ray_auth_mode if record and not address else None, explicit=address is not None)
    try:
        name = app_name or (record.app if record else lifecycle._only_app())
        if not cluster.app_exists(name):
            raise NothingRunning(f"no app named {name!r} is running on {target}")
        deployments = [d.name for d in cluster.read_progress(name, time.monotonic()).deployments]
        if model is not None and model not in deployments:
            raise LaunchError(f"app {name!r} has no model {model!r}; its deployments: {', '.join(deployments)}")
        if not (nodes := _nodes()):
            raise Unreachable(f"no live node of {target} reports the Ray agent that serves its logs")
    finally:
        cluster.disconnect()  # the agents answer without a driver; a driver would die with the cluster
    logs = AppLogs(name, [model] if model else deployments, nodes)
    try:
        yield logs
    finally:
        logs.close()


def _nodes() -> list[Node]:
    import ray

    return [
        Node(n["NodeID"], n["NodeManagerAddress"], int(n["MetricsAgentPort"]))
        for n in ray.nodes()
        if n.get("Alive") and n.get("MetricsAgentPort", 0) > 0
    ]
