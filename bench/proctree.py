"""The memory of a benchmarked server's whole process tree, read from /proc (Linux), and its clean-up.

A server's processes are the one the benchmark started and all its descendants, found by parent id. When the
server starts Ray itself (`aana up` with its embedded cluster, bench/ray_serve_llm_server.py), Ray's GCS, raylet
and workers are its descendants while it runs (the driver starts GCS and raylet, the raylet starts the workers
and agents), but a Ray daemon whose parent dies is re-parented to init and drops out of the tree. So a
process also belongs to the server when its command line names a Ray session directory that a member's command
line named: Ray names the directory `session_<date>_<time>_<micros>_<pid of the driver>`, so the name is unique to
this server's run and never matches another Ray on the machine. Every process ever seen is remembered with its
start time, so that `kill_leftovers` can end exactly those (and not a later process that reuses an id).

RSS sums count a page shared by several processes (the libraries mapped by every Ray worker, Ray's object store)
once per process: it is what `top` adds up, an upper bound. PSS divides each shared page among its users, so the
sum of PSS is the tree's real share of memory; both are reported.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

SESSION = re.compile(rb"session_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d+_\d+")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:  # the process ended meanwhile
        return b""


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent id, start time in clock ticks), or None when the process is gone or a zombie."""
    raw = _read(f"/proc/{pid}/stat")
    if not raw:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()  # the command name in parentheses may hold spaces
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[1]), int(fields[19])


def _kb(path: str, key: bytes) -> int:
    for line in _read(path).splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


class ProcessTree:
    """The processes of one server: its root process, its descendants and its Ray session's processes."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.sessions: set[bytes] = set()
        self.seen: dict[int, int] = {}  # pid -> start time, of every member ever found

    def members(self) -> list[int]:
        stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(int(p)))}
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        tree, todo = set(), [self.root] if self.root in stats else []
        while todo:
            pid = todo.pop()
            tree.add(pid)
            todo += children.get(pid, [])
        for pid in tree:
            self.sessions.update(SESSION.findall(_read(f"/proc/{pid}/cmdline")))
        if self.sessions:
            for pid in stats.keys() - tree:
                cmdline = _read(f"/proc/{pid}/cmdline")
                if any(session in cmdline for session in self.sessions):
                    tree.add(pid)
        self.seen.update((pid, stats[pid][1]) for pid in tree)
        return sorted(tree)

    def memory_mb(self) -> tuple[float, float]:
        """(RSS, PSS) summed over the members, in MB."""
        pids = self.members()
        rss = sum(_kb(f"/proc/{pid}/status", b"VmRSS:") for pid in pids)
        pss = sum(_kb(f"/proc/{pid}/smaps_rollup", b"Pss:") for pid in pids)
        return rss / 1024, pss / 1024

    def alive(self) -> list[int]:
        """The members ever seen that still run (same id, same start time)."""
        return [pid for pid, started in self.seen.items() if (s := _stat(pid)) and s[1] == started]

    def kill_leftovers(self, grace_s: float = 10) -> list[str]:
        """End the members that outlived the server's shutdown: SIGTERM, then SIGKILL after `grace_s`. Returns
        "pid name" of each."""
        self.members()  # a last look, for processes started since the last sample
        left = [f"{pid} {_read(f'/proc/{pid}/comm').decode().strip()}" for pid in self.alive()]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.alive():
                os.kill(pid, sig)
            deadline = time.monotonic() + grace_s
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.2)
        return left


class PeakMemory:
    """Samples a tree's memory every `interval_s` in a thread while the `with` block runs; keeps the peaks."""

    def __init__(self, tree: ProcessTree, interval_s: float = 0.5) -> None:
        self.tree = tree
        self.interval_s = interval_s
        self.rss_mb = 0.0
        self.pss_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            rss, pss = self.tree.memory_mb()
            self.rss_mb, self.pss_mb = max(self.rss_mb, rss), max(self.pss_mb, pss)
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
