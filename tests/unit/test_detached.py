"""runtime.detached: the pipe protocol between a detached `aana up` child and its parent (no child process here)."""

from __future__ import annotations

import os
import time

from runtime.cluster import DeploymentProgress, Progress
from runtime.detached import _Channel, _read_events, _replay
from runtime.lifecycle import Serving


class Recorder:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, *args))


def test_every_event_arrives_also_when_several_come_in_one_write():
    read_fd, write_fd = os.pipe()
    channel = _Channel(write_fd)
    progress = Progress("DEPLOYING", 1.5, [DeploymentProgress("m", "UPDATING", {"STARTING": 1}, "")])
    channel.info("database: applied 0004")
    channel.progress(progress)
    channel.warning("could not write to the database")
    channel.serving(Serving("app", "http://localhost:8000", ["m"]))
    channel.stream.close()
    events = list(_read_events(read_fd, deadline=time.monotonic() + 10))
    os.close(read_fd)
    assert [e["kind"] for e in events] == ["info", "progress", "warning", "serving"]
    observer = Recorder()
    for event in events[:-1]:
        _replay(event.pop("kind"), event, observer)
    assert observer.calls == [
        ("info", "database: applied 0004"),
        ("progress", progress),
        ("warning", "could not write to the database"),
    ]
    assert events[-1] == {"kind": "serving", "app": "app", "base_url": "http://localhost:8000", "models": ["m"],
                          "pid": None, "log": None}  # fmt: skip


def test_a_parent_that_stopped_listening_is_not_the_childs_error():
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    channel = _Channel(write_fd)
    channel.info("stopped")  # EPIPE: the parent returned once the app served
    channel.info("again")
    assert channel.stream is None
