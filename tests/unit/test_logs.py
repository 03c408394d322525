"""`aana logs` without Ray: which files belong to which model, lines split across chunks, multi-line records, the
time order across replicas, --since, and following new lines and new replicas, over fake node agents that speak
the same two calls as Ray's log service (list, stream). The real service is tests/e2e/test_cli_logs_chat.py's."""

from __future__ import annotations

import queue
from datetime import datetime

import grpc
import pytest
import typer

from aana_cli.logs_cmd import parse_since
from runtime.errors import Unreachable
from runtime.logs import AppLogs, LineSplitter, Node, classify, merged, timestamp

pytestmark = pytest.mark.unit

T = "2026-12-03 18:07:{:02d},{:03d}"


def line(second: int, text: str, ms: int = 0, level: str = "INFO") -> str:
    return f"{level} {T.format(second, ms)} app_echo r1 -- {text}\n"


def test_files_are_matched_to_the_apps_deployments_by_their_names():
    deployments = ["echo", "echo_big", "OpenAIIngress"]
    assert classify("serve/replica_app_echo_big_x1y2z3.log", "app", deployments) == ("echo_big", "x1y2z3")
    assert classify("serve/replica_app_echo_x1y2z3.log.2", "app", deployments) == ("echo", "x1y2z3")
    assert classify("serve/replica_app_OpenAIIngress_q9.log", "app", deployments) == ("OpenAIIngress", "q9")
    for other in ("serve/replica_app2_echo_x1.log", "serve/replica_app_other_x1.log", "serve/controller_12.log",
                  "serve/replica_app_echo_.log", "serve/replica_app_echo_x1.txt"):  # fmt: skip
        assert classify(other, "app", deployments) is None, other


def test_a_record_keeps_its_time_on_its_continuation_lines_and_chunks_may_split_lines():
    splitter = LineSplitter("echo", "r1")
    text = line(1, "failed", level="ERROR") + "Traceback (most recent call last):\nValueError: x\n" + line(2, "ok")
    data = text.encode()
    lines = splitter.feed(data[:30]) + splitter.feed(data[30:70]) + splitter.feed(data[70:])
    assert [(entry.text.split(" -- ")[-1], entry.at.second) for entry in lines] == [
        ("failed", 1), ("Traceback (most recent call last):", 1), ("ValueError: x", 1), ("ok", 2)]  # fmt: skip
    assert splitter.feed(b"INFO 2026-12-03 18:07:03,000 half") == [] and splitter.partial
    assert [entry.text for entry in splitter.flush()] == ["INFO 2026-12-03 18:07:03,000 half"]


def test_json_lines_carry_their_time_too():
    assert timestamp('{"levelname": "INFO", "asctime": "2026-12-03 18:07:04,250", "message": "m"}') == datetime(
        2026, 12, 3, 18, 7, 4, 250000
    )
    assert timestamp("  File 'x.py', line 3") is None and timestamp("{not json") is None


def test_replicas_are_merged_in_time_order_and_since_drops_older_records_whole():
    a = LineSplitter("echo", "r1").feed((line(1, "a1") + line(5, "a5", level="ERROR") + "  trace\n").encode())
    b = LineSplitter("OpenAIIngress", "r2").feed((line(3, "b3") + line(5, "b5") + line(7, "b7")).encode())
    texts = [entry.text.split(" -- ")[-1] for entry in merged([a, b])]
    assert texts == ["a1", "b3", "a5", "  trace", "b5", "b7"]
    since = datetime(2026, 12, 3, 18, 7, 5)
    assert [entry.text.split(" -- ")[-1] for entry in merged([a, b], since)] == ["a5", "  trace", "b5", "b7"]


def test_since_takes_durations_and_local_times():
    now = datetime(2026, 12, 3, 18, 0, 0)
    assert parse_since("10m", now) == datetime(2026, 12, 3, 17, 50)
    assert parse_since("90s", now) == datetime(2026, 12, 3, 17, 58, 30)
    assert parse_since("1d", now) == datetime(2026, 12, 2, 18, 0)
    assert parse_since("2026-12-03T12:30", now) == datetime(2026, 12, 3, 12, 30)
    aware = parse_since("2026-12-03T12:30+00:00", now)
    assert aware.tzinfo is None  # compared with the naive local times on the log lines
    with pytest.raises(typer.BadParameter, match="neither a duration"):
        parse_since("yesterday", now)


# -- reading and following through node agents -------------------------------------------------------------


class Chunk:
    def __init__(self, data: bytes):
        self.data = data


class FollowCall:
    """A keep-alive stream: yields what the test appends, until cancelled."""

    def __init__(self, pending: queue.Queue):
        self.pending = pending
        self.cancelled = False

    def __iter__(self):
        while True:
            data = self.pending.get()
            if data is None:
                raise grpc.RpcError("cancelled")
            yield Chunk(data)

    def cancel(self) -> None:
        self.cancelled = True
        self.pending.put(None)


class FakeAgent:
    """One node's logs folder: file name -> bytes; `append` feeds followers."""

    def __init__(self, files: dict[str, bytes], down: bool = False):
        self.files, self.down = files, down
        self.followers: dict[str, queue.Queue] = {}
        self.calls: list[FollowCall] = []

    def list(self, glob: str) -> list[str]:
        if self.down:
            raise grpc.RpcError("unavailable")
        assert glob == "serve/replica_app_*.log*"
        return [*self.files, "serve/replica_app_gone_zz.log"]  # a deployment the app no longer has: ignored

    def stream(self, name: str, start: int = 0, follow: bool = False):
        data = self.files[name][start:]
        if not follow:
            return [Chunk(data[i : i + 7]) for i in range(0, len(data), 7)]
        self.followers[name] = pending = queue.Queue()
        pending.put(data)
        self.calls.append(call := FollowCall(pending))
        return call

    def append(self, name: str, data: bytes) -> None:
        self.files[name] += data
        if name in self.followers:
            self.followers[name].put(data)

    def close(self) -> None:
        pass


def _logs(agents: dict[str, FakeAgent]) -> AppLogs:
    nodes = [Node(node_id, f"10.0.0.{i}", 5000) for i, node_id in enumerate(agents)]
    logs = AppLogs("app", ["echo", "OpenAIIngress"], nodes)
    logs._agents.update(agents)
    return logs


def test_read_merges_every_nodes_replicas_and_warns_about_a_node_that_does_not_answer():
    one = FakeAgent({"serve/replica_app_echo_r1.log": (line(2, "echo r1") + "partial").encode(),
                     "serve/replica_app_echo_r1.log.1": line(1, "rotated").encode()})  # fmt: skip
    two = FakeAgent({"serve/replica_app_OpenAIIngress_r2.log": line(3, "ingress").encode()})
    logs = _logs({"n1": one, "n2": two, "n3": FakeAgent({}, down=True)})
    lines, offsets = logs.read()
    assert [(e.deployment, e.text.split(" -- ")[-1]) for e in lines] == [
        ("echo", "rotated"), ("echo", "echo r1"), ("OpenAIIngress", "ingress")]  # fmt: skip
    # Following resumes each live file where its last complete line ended (the partial one comes then).
    assert sorted(offsets.values()) == [len(line(2, "echo r1")), len(line(3, "ingress"))]
    [warning] = logs.warnings
    assert "node n3 (10.0.0.2)" in warning and "10.0.0.2:5000" in warning


def test_no_node_answering_is_unreachable():
    with pytest.raises(Unreachable, match="did not answer"):
        _logs({"n1": FakeAgent({}, down=True)}).files()


def test_follow_prints_new_lines_and_new_replicas_until_closed():
    agent = FakeAgent({"serve/replica_app_echo_r1.log": line(1, "old").encode()})
    logs = _logs({"n1": agent})
    lines = logs.follow(rescan_s=0.05)
    assert next(lines).text.endswith("old")
    agent.append("serve/replica_app_echo_r1.log", line(2, "new").encode())
    assert next(lines).text.endswith("new")
    agent.files["serve/replica_app_OpenAIIngress_r9.log"] = line(3, "a replica that started later").encode()
    entry = next(lines)
    assert (entry.deployment, entry.replica, entry.text.split(" -- ")[-1]) == (
        "OpenAIIngress", "r9", "a replica that started later")  # fmt: skip
    lines.close()
    assert len(agent.calls) == 2 and all(call.cancelled for call in agent.calls)


def test_since_applies_to_followed_lines_too():
    agent = FakeAgent({"serve/replica_app_echo_r1.log": line(1, "old").encode()})
    lines = _logs({"n1": agent}).follow(since=datetime(2026, 12, 3, 18, 7, 2), rescan_s=0.05)
    agent.append("serve/replica_app_echo_r1.log", (line(1, "late but old", 500) + line(3, "new")).encode())
    assert next(lines).text.endswith("new")
    lines.close()


def test_following_ends_as_unreachable_when_the_cluster_goes_away():
    agent = FakeAgent({"serve/replica_app_echo_r1.log": line(1, "old").encode()})
    lines = _logs({"n1": agent}).follow(rescan_s=0.05)
    assert next(lines).text.endswith("old")
    agent.down = True
    for call in agent.calls:
        call.cancel()  # what the node's end of the stream does when its agent stops
    with pytest.raises(Unreachable, match="the cluster of app stopped answering"):
        next(lines)
