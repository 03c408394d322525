"""The database as the running service fills it: one requests row per completion, the run's start and stop."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
from e2e.server import run_aana, serving

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]


def test_requests_and_run_are_recorded(tmp_path, tiny_model_dir):
    db = tmp_path / "aana.db"
    spec = tmp_path / "tiny.toml"
    spec.write_text(
        f'name = "rec"\n[deployments.tiny]\nengine = "transformers"\nmodel = "{tiny_model_dir}"\nnum_cpus = 0.5\n'
    )
    usages = {}
    with serving(spec, tmp_path, args=("--database-url", f"sqlite:///{db}")) as server:
        client = openai.OpenAI(api_key="x", base_url=server.base_url, max_retries=0, timeout=60)
        for i in range(2):
            reply = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": f"Hello {i}"}], max_tokens=5 + i
            )
            usages[reply.id] = (reply.usage.prompt_tokens, reply.usage.completion_tokens, 0)
        for i in range(2):
            chunks = list(client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": f"Stream {i}"}], max_tokens=4 + i,
                stream=True, stream_options={"include_usage": True},
            ))  # fmt: skip
            usage = chunks[-1].usage
            usages[chunks[0].id] = (usage.prompt_tokens, usage.completion_tokens, 1)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
        rows = _wait_for_rows(db, 5)
        with sqlite3.connect(db) as conn:
            [(run_id, state, stopped)] = conn.execute("select id, state, stopped_at from runs").fetchall()
        assert state == "running" and stopped is None
    completions = {r[0]: (r[1], r[2], r[3]) for r in rows if r[4] == 200}
    assert completions == usages
    assert [r[4] for r in rows if r[0] not in usages] == [404]
    assert {r[5] for r in rows} == {run_id}
    with sqlite3.connect(db) as conn:
        [(state, started, stopped, spec_text)] = conn.execute(
            "select state, started_at, stopped_at, spec_text from runs"
        ).fetchall()
    assert state == "stopped" and started and stopped and stopped >= started
    assert spec_text == spec.read_text()


def _wait_for_rows(db: Path, n: int, timeout_s: float = 20) -> list[tuple]:
    """The recorder writes in batches off the request path: rows arrive within its flush interval."""
    deadline = time.monotonic() + timeout_s
    while True:
        with sqlite3.connect(db) as conn:
            rows = conn.execute(
                "select id, prompt_tokens, completion_tokens, stream, status_code, run_id from requests"
            ).fetchall()
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def test_up_refuses_a_database_that_is_behind(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'old.db'}"
    assert run_aana("migrate", "--database-url", db_url, "--to", "0001").returncode == 0
    spec = tmp_path / "echo.toml"
    spec.write_text('name = "e"\n[deployments.echo]\nengine = "echo"\n')
    result = run_aana("up", str(spec), "--database-url", db_url, timeout_s=60)
    assert result.returncode == 1
    assert "is at revision 0001" in result.stderr and "aana migrate --database-url" in result.stderr
    assert "Traceback" not in result.stderr


def test_wheel_installed_elsewhere_runs_migrate(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    [wheel] = dist.glob("aana-*.whl")
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    db = tmp_path / "fresh.db"
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    code = (
        "import aana_cli, migrations, sys; from aana_cli.main import app; "
        f"assert aana_cli.__file__.startswith({str(target)!r}), aana_cli.__file__; "
        f"assert migrations.__file__.startswith({str(target)!r}), migrations.__file__; "
        f"sys.argv = ['aana', 'migrate', '--database-url', 'sqlite:///{db}']; app()"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "applied 0001" in result.stdout and "now at revision" in result.stdout
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")}
    assert {"runs", "requests", "alembic_version"} <= tables
