"""`aana up --detach`, `aana status` and `aana down` from separate processes, as from separate terminals."""

from __future__ import annotations

import json
import subprocess
import time

import jsonschema
import openai
import pytest
from e2e.server import aana_command, free_port, interrupt, run_aana

from runtime.status import STATUS_SCHEMA

pytestmark = pytest.mark.e2e


@pytest.fixture
def state_env(tmp_path, monkeypatch):
    """Each test gets its own state directory, so records of other runs never interfere."""
    monkeypatch.setenv("AANA_STATE_DIR", str(tmp_path / "state"))
    return tmp_path


def _status_json():
    result = run_aana("status", "--json", timeout_s=120)
    return result.returncode, json.loads(result.stdout)


def test_detach_status_down(state_env, tiny_model_dir):
    spec = state_env / "tiny.toml"
    spec.write_text(
        f'name = "life"\n[deployments.tiny]\nengine = "transformers"\nmodel = "{tiny_model_dir}"\nnum_cpus = 0.5\n'
    )
    port = free_port()
    started = run_aana("up", str(spec), "--detach", "--migrate", "--port", str(port), timeout_s=300)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"http://localhost:{port}/v1" in started.stdout and "aana down" in started.stderr

        table = run_aana("status", timeout_s=120)
        assert table.returncode == 0, table.stdout + table.stderr
        assert "life" in table.stdout and "RUNNING" in table.stdout and "tiny" in table.stdout

        code, snapshot = _status_json()
        assert code == 0
        jsonschema.validate(snapshot, STATUS_SCHEMA)
        [app] = snapshot["apps"]
        assert app["models"] == ["tiny"] and app["endpoint"] == f"http://localhost:{port}/v1"

        client = openai.OpenAI(api_key="x", base_url=f"http://127.0.0.1:{port}", max_retries=0)
        reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
        assert reply.usage.completion_tokens == 3
        # The recorder writes in batches, off the request path: poll; the deadline only guards against a hang.
        deadline = time.monotonic() + 60
        code, snapshot = _status_json()
        while "tiny" not in (requests := snapshot["apps"][0]["requests"] or {}):
            assert time.monotonic() < deadline, f"aana status never counted the request: {snapshot}"
            time.sleep(1)
            code, snapshot = _status_json()
        assert code == 0
        jsonschema.validate(snapshot, STATUS_SCHEMA)
        assert requests["tiny"]["count"] == 1 and requests["tiny"]["errors"] == 0
        assert requests["tiny"]["latency_ms"]["p50"] > 0
        assert "1/0" in run_aana("status", timeout_s=120).stdout
    finally:
        stopped = run_aana("down", timeout_s=180)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "stopped life" in stopped.stdout
    code, body = _status_json()
    assert code == 2 and "nothing is running" in body["error"]


def test_status_shows_why_a_deployment_fails(state_env):
    spec = state_env / "broken.toml"
    spec.write_text(
        'name = "broken"\n[deployments.ghost]\nengine = "transformers"\nmodel = "aana-tests/no-such-model"\n'
        "num_cpus = 0.5\n"  # one replica: its six tries in a row take long enough for several status polls
    )
    stderr = state_env / "up.stderr"
    with stderr.open("w") as sink:  # a file, not a pipe: nobody reads a pipe while `aana up` runs, and it could fill
        up = subprocess.Popen(
            [*aana_command(), "up", str(spec), "--migrate", "--port", str(free_port())],
            stdout=subprocess.DEVNULL, stderr=sink, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120  # a hang guard; `aana up` itself gives up once the replicas fail
        seen = None
        while time.monotonic() < deadline and up.poll() is None:
            code, snapshot = _status_json()
            ghost = [d for a in snapshot.get("apps", []) for d in a["deployments"] if d["name"] == "ghost"]
            if ghost and ghost[0]["message"]:
                seen = (code, ghost[0])
                break
            time.sleep(1)
        assert seen is not None, f"aana status never showed the failing deployment's message:\n{stderr.read_text()}"
        code, ghost = seen
        assert code == 1
        assert "aana-tests/no-such-model" in ghost["message"]
        assert up.wait(180) == 1, stderr.read_text()
    finally:
        interrupt(up)  # a no-op once it has exited; after a failure, it must not outlive the test
    assert "aana-tests/no-such-model" in stderr.read_text()


def test_status_and_down_with_ray_token_auth_disabled(state_env, monkeypatch):
    """Ray 2.60 turns token auth on for new local clusters; a cluster started with it off must work the same."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    spec = state_env / "echo.toml"
    spec.write_text('name = "noauth"\n[deployments.echo]\nengine = "echo"\nnum_cpus = 0.2\n')
    started = run_aana("up", str(spec), "--detach", "--migrate", "--port", str(free_port()), timeout_s=300)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        monkeypatch.delenv("RAY_AUTH_MODE")  # another terminal, without the setting: the record supplies it
        code, snapshot = _status_json()
        assert code == 0 and snapshot["apps"][0]["name"] == "noauth"
    finally:
        stopped = run_aana("down", timeout_s=180)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert _status_json()[0] == 2


def test_the_database_password_of_a_detached_up_is_in_no_command_line(state_env):
    """`aana up --detach --database-url postgresql://u:secret@...`: `ps` shows every process's argv to every user."""
    from pg import create_database, drop_database, postgres_server
    from sqlalchemy.engine import make_url

    spec = state_env / "echo.toml"
    spec.write_text('name = "quiet"\n[deployments.echo]\nengine = "echo"\nnum_cpus = 0.2\n')
    with postgres_server() as admin_url:
        plain = create_database(admin_url, "aana_quiet")
        # The throwaway server trusts every local connection, so any password works: a marker to look for.
        url = make_url(plain).set(password="s3cret-token").render_as_string(hide_password=False)
        try:
            started = run_aana("up", str(spec), "--detach", "--migrate", "--database-url", url,
                               "--port", str(free_port()), timeout_s=300)  # fmt: skip
            try:
                assert started.returncode == 0, started.stdout + started.stderr
                command_lines = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
                assert "aana detached-child" in command_lines.stdout
                assert "s3cret-token" not in command_lines.stdout
            finally:
                stopped = run_aana("down", "--app", "quiet", timeout_s=180)
            assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        finally:
            drop_database(admin_url, "aana_quiet")
