"""A PostgreSQL server for tests: the one AANA_TEST_POSTGRES_URL names, or a throwaway one started here.

The throwaway server lives in a temporary folder, listens on 127.0.0.1 on a free port with trust authentication,
and is stopped and deleted when the `postgres_server()` block ends. PostgreSQL refuses to run as root, so as root
initdb and pg_ctl run as the `postgres` user (via runuser).

Binaries are looked up in AANA_TEST_POSTGRES_BIN, then /usr/lib/postgresql/<newest>/bin, then PATH. When there are
none, `postgres_server()` raises `PostgresUnavailable` with what to install; the tests fail rather than skip on it
(AANA_SKIP_POSTGRES=1 is the explicit opt-out).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, make_url, text

INSTALL_HINT = (
    "install PostgreSQL (Debian/Ubuntu: `apt-get install -y postgresql`), or set AANA_TEST_POSTGRES_URL to a server "
    "whose user may create databases, or set AANA_SKIP_POSTGRES=1 to skip the PostgreSQL tests explicitly"
)


class PostgresUnavailable(Exception):
    """No PostgreSQL to test against; the message says what to install or set."""


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield the admin URL of a server whose user may create and drop databases."""
    url = os.environ.get("AANA_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    server = TempPostgres(find_bin_dir())
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def find_bin_dir() -> Path:
    """The folder holding initdb and pg_ctl, or PostgresUnavailable."""
    candidates = []
    if os.environ.get("AANA_TEST_POSTGRES_BIN"):
        candidates.append(Path(os.environ["AANA_TEST_POSTGRES_BIN"]))
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: _version(p.parent.name), reverse=True)
    candidates.extend(versions)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    raise PostgresUnavailable(f"no PostgreSQL server binaries (initdb, pg_ctl) found; {INSTALL_HINT}")


# Stops the server and deletes its folder once the test process is gone, even if it was killed (a CI timeout)
# before its own cleanup ran. argv: the test process id, the folder, then the stop command.
_WATCHDOG = """
import os, shutil, subprocess, sys, time
parent, folder, stop = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
while True:
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        break
    time.sleep(0.5)
subprocess.run(stop, capture_output=True)
shutil.rmtree(folder, ignore_errors=True)
"""


class TempPostgres:
    """A PostgreSQL cluster in a temporary folder, tuned for tests (no fsync)."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.as_root = os.geteuid() == 0
        self.folder: Path | None = None
        self.url = ""
        self._watchdog: subprocess.Popen | None = None

    def start(self) -> None:
        # As root, /tmp: a TMPDIR under /root would not be reachable by the postgres user.
        self.folder = Path(tempfile.mkdtemp(prefix="aana-pg-", dir="/tmp" if self.as_root else None))
        if self.as_root:
            self._give_to_postgres(self.folder)
        data = self.folder / "data"
        self._run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        last_error = ""
        for _ in range(3):  # another process may take the free port between choosing and binding it
            port = _free_port()
            options = (
                f"-k {self.folder} -p {port} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            log = self.folder / "server.log"
            result = self._run(
                "pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", "30", "-o", options, "start", check=False
            )
            if result.returncode == 0:
                self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
                stop = self._command("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
                self._watchdog = subprocess.Popen(
                    [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(self.folder), *stop],
                    start_new_session=True,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                return
            last_error = result.stdout + result.stderr + (log.read_text() if log.exists() else "")
        self.stop()
        raise PostgresUnavailable(f"the test PostgreSQL server did not start:\n{last_error}")

    def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
            self._watchdog = None
        if self.folder is None:
            return
        data = self.folder / "data"
        if (data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None

    def _command(self, program: str, *args: str) -> list[str]:
        command = [str(self.bin_dir / program), *args]
        return ["runuser", "-u", "postgres", "--", *command] if self.as_root else command

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = self._command(program, *args)
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise PostgresUnavailable(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
        return result

    @staticmethod
    def _give_to_postgres(folder: Path) -> None:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError as error:
            raise PostgresUnavailable(
                f"running as root, and there is no `postgres` user to run the test server as; {INSTALL_HINT}"
            ) from error
        os.chown(folder, user.pw_uid, user.pw_gid)


def database_url(admin_url: str, name: str) -> str:
    """The URL of database `name` on the admin URL's server, password included (tests need it to connect)."""
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def create_database(admin_url: str, name: str) -> str:
    """Create an empty database and return its URL."""
    _admin(admin_url, f'CREATE DATABASE "{name}"')
    return database_url(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    """Drop a database, disconnecting whoever still uses it."""
    _admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _admin(admin_url: str, statement: str) -> None:
    url = make_url(admin_url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(statement))
    finally:
        engine.dispose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())
