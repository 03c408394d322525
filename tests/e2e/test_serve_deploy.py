"""`aana export` -> `serve deploy` on a Ray cluster started here with `ray start`, as an operator would: the deployed
app answers like `aana up` of the same spec, reads its secret from the cluster's environment (never from the file),
and a variable missing on the cluster fails the deploy with the spec's own message.

The cluster runs under its own process group and temp dir: stopping it kills that group only, never `ray stop`
(which would stop every Ray on the machine).
"""

from __future__ import annotations

import os
import subprocess

import httpx
import openai
import pytest
from e2e.ray_cluster import CLUSTER_ENV, answers, bin_path, ray_head, wait_for
from e2e.server import free_port, run_aana, serving

pytestmark = pytest.mark.e2e

KEY_VAR = "AANA_EXPORT_TEST_KEY"
KEY = "exported-secret-4711"
SPEC = f"""
name = "exported"

[server]
api_key = "${{{KEY_VAR}}}"

[deployments.echo]
engine = "echo"
num_cpus = 0.2
max_model_len = 512
"""
MESSAGES = [{"role": "user", "content": "from laptop to cluster"}]


def _serve(*args: str, address: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [bin_path("serve"), *args, "--address", address], capture_output=True, text=True, timeout=120, env=env,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _answers_of(base_url: str) -> dict:
    """What a client sees of the app: the model list, a chat completion and a stream, without ids and clocks."""
    client = openai.OpenAI(api_key=KEY, base_url=f"{base_url}/v1", max_retries=0, timeout=60)
    models = [m.model_dump(exclude={"created"}) for m in client.models.list().data]
    reply = client.chat.completions.create(model="echo", messages=MESSAGES, max_tokens=16)
    chunks = list(client.chat.completions.create(model="echo", messages=MESSAGES, max_tokens=16, stream=True))
    refused = httpx.get(f"{base_url}/v1/models", timeout=30)  # no key
    return {
        "models": models,
        "reply": reply.model_dump(exclude={"id", "created"}),
        "stream": [c.model_dump(exclude={"id", "created"}) for c in chunks],
        "without key": refused.status_code,
    }


def test_serve_deploy_of_the_export_serves_what_aana_up_serves(tmp_path, monkeypatch):
    spec = tmp_path / "exported.toml"
    spec.write_text(SPEC)
    monkeypatch.setenv(KEY_VAR, KEY)
    with serving(spec, tmp_path) as server:
        expected = _answers_of(server.base_url)
    assert expected["reply"]["choices"][0]["message"]["content"] == "from laptop to cluster"
    assert expected["without key"] == 401

    port = free_port()
    config = tmp_path / "serve.yaml"
    exported = run_aana("export", str(spec), "--port", str(port), "-o", str(config))
    assert exported.returncode == 0, exported.stderr
    assert f"${{{KEY_VAR}}}" in config.read_text() and KEY not in config.read_text()

    env = os.environ | CLUSTER_ENV | {KEY_VAR: KEY}
    with ray_head(tmp_path / "ray-head.log", env) as (_, dashboard):
        deployed = _serve("deploy", str(config), address=dashboard, env=env)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        base_url = f"http://127.0.0.1:{port}"

        def status() -> str:
            return _serve("status", address=dashboard, env=env).stdout

        wait_for(lambda: answers(f"{base_url}/health"), "the exported app answering", 120, status)
        assert _answers_of(base_url) == expected

        # The same spec where the cluster lacks a variable: the deploy fails with the spec's own message.
        spec.write_text(
            SPEC.replace("[deployments.echo]", 'allowed_hosts = ["${AANA_EXPORT_UNSET}"]\n[deployments.echo]')
        )
        assert run_aana("export", str(spec), "--port", str(port), "-o", str(config)).returncode == 0
        assert _serve("deploy", str(config), address=dashboard, env=env).returncode == 0
        wait_for(lambda: "DEPLOY_FAILED" in status(), "the deploy failing", 60, status)
        assert "exported.toml is not a valid aana spec" in status()
        assert "server.allowed_hosts[0]: environment variable AANA_EXPORT_UNSET is not set" in status()
