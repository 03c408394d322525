"""Which apps this machine's `aana up` processes serve, so `aana status` and `aana down` find them from any terminal.

One small JSON file per app in the state directory (`$AANA_STATE_DIR`, else `$XDG_STATE_HOME/aana`, else
`~/.local/state/aana`), written once the app serves and removed when that `aana up` exits. A record whose process
is gone is stale and ignored. Standard library only.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class AppRecord:
    app: str
    pid: int  # the `aana up` process that owns the app
    ray_address: str  # GCS address of the cluster it runs on
    base_url: str
    models: list[str]
    started_at: float
    owns_ray: bool  # True when that process started the Ray it runs on (and stops it on exit)
    log: str | None = None  # where a detached `aana up` writes its output
    run_id: str | None = None  # this run's row in the database's runs table
    ray_auth_mode: str | None = None  # RAY_AUTH_MODE of the owning process, for drivers that join later
    database_url: str | None = None  # where the app records its requests (the file is private to the user)


def state_dir() -> Path:
    if explicit := os.environ.get("AANA_STATE_DIR"):
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "aana"


def _path(app: str) -> Path:
    return state_dir() / "apps" / f"{app}.json"


def log_path(app: str) -> Path:
    path = state_dir() / "logs" / f"{app}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def save(record: AppRecord) -> None:
    path = _path(record.app)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.touch(mode=0o600)  # it may hold a database password
    tmp.write_text(json.dumps(asdict(record), indent=2))
    tmp.replace(path)


def remove(app: str, pid: int) -> None:
    """Remove the record if it is still this process's (a newer `aana up` of the same app may have replaced it)."""
    record = load(app)
    if record is not None and record.pid == pid:
        _path(app).unlink(missing_ok=True)


def load(app: str) -> AppRecord | None:
    try:
        data = json.loads(_path(app).read_text())
        if "deployment_id" in data:  # written by an aana that called a run a deployment
            data["run_id"] = data.pop("deployment_id")
        return AppRecord(**data)
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None


def _records() -> list[AppRecord]:
    folder = state_dir() / "apps"
    records = [load(p.stem) for p in folder.glob("*.json")] if folder.is_dir() else []
    return [r for r in records if r is not None]


def running() -> list[AppRecord]:
    """Records whose `aana up` process is still alive, newest first."""
    alive = [r for r in _records() if pid_alive(r.pid)]
    return sorted(alive, key=lambda r: r.started_at, reverse=True)


def stale() -> list[AppRecord]:
    """Records whose `aana up` process is gone without removing them (killed, or its machine restarted)."""
    return [r for r in _records() if not pid_alive(r.pid)]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
