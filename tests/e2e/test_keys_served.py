"""Keys, limits and usage through a real `aana up` with two ingress replicas: keys made with `aana keys`, a key
limited to one model, a requests-per-minute limit that holds across the replicas (the counters live in one Ray
actor), a revocation that reaches every replica within seconds, and `aana usage` totals equal to what the
responses said."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from e2e.server import run_aana, serving

pytestmark = pytest.mark.e2e

SPEC = """
name = "keys"
[server]
ingress_replicas = 2
store_completions = true
[deployments.echo]
engine = "echo"
num_cpus = 0.2
[deployments.other]
engine = "echo"
num_cpus = 0.2
"""
HI = [{"role": "user", "content": "count these four words"}]


def _key(url: str, *args: str) -> str:
    made = run_aana("keys", "create", "--database-url", url, *args)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def test_keys_limits_revocation_and_usage_across_two_ingress_replicas(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'aana.db'}"
    monkeypatch.setenv("AANA_DATABASE_URL", url)  # aana up's database (it wins over a spec's [database] url)
    assert run_aana("migrate", "--database-url", url).returncode == 0
    alice = _key(url, "--name", "alice", "--models", "echo")
    limited = _key(url, "--name", "limited", "--rpm", "5")
    spec = tmp_path / "keys.toml"
    spec.write_text(SPEC)
    with serving(spec, tmp_path) as server:
        base = f"{server.base_url}/v1"
        client = openai.OpenAI(api_key=alice, base_url=base, max_retries=0, timeout=60)
        usages = [client.chat.completions.create(model="echo", messages=HI).usage for _ in range(3)]
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="other", messages=HI)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(api_key="aana-nothere_x", base_url=base, max_retries=0).models.list()

        # Stored completions: the key that made one sees it, another key does not.
        stored = client.chat.completions.create(model="echo", messages=HI, store=True)
        usages.append(stored.usage)
        assert client.chat.completions.retrieve(stored.id).id == stored.id
        with pytest.raises(openai.NotFoundError):
            openai.OpenAI(api_key=limited, base_url=base, max_retries=0).chat.completions.retrieve(stored.id)

        # Five requests a minute, over both ingress replicas together.
        codes = []
        for _ in range(6):
            answer = httpx.post(f"{base}/chat/completions", json={"model": "other", "messages": HI}, timeout=60,
                                headers={"authorization": f"Bearer {limited}"})  # fmt: skip
            codes.append(answer.status_code)
        assert codes == [200] * 5 + [429], codes
        assert int(answer.headers["retry-after"]) >= 1 and answer.headers["x-ratelimit-remaining-requests"] == "0"

        # A revocation stops the key on every replica within seconds.
        assert run_aana("keys", "revoke", "alice", "--database-url", url).returncode == 0
        revoked_at = time.monotonic()
        as_alice = {"authorization": f"Bearer {alice}"}
        refused_in_a_row = 0  # each replica re-reads the keys on its own clock: wait until both refuse
        while refused_in_a_row < 8:
            status = httpx.get(f"{base}/models", headers=as_alice, timeout=30).status_code
            refused_in_a_row = refused_in_a_row + 1 if status == 401 else 0
            assert time.monotonic() - revoked_at < 5, "the revoked key still works on a replica after 5 s"
        with pytest.raises(openai.AuthenticationError):
            client.models.list()

        # Usage: what the responses said, per key (the recorder writes every second).
        deadline = time.monotonic() + 30
        while True:
            done = run_aana("usage", "--json", "--key", "alice", "--database-url", url)
            assert done.returncode == 0, done.stderr
            totals = json.loads(done.stdout)["totals"]
            if totals["requests"] >= 5 or time.monotonic() > deadline:
                break
            time.sleep(1)
    assert totals["prompt_tokens"] == sum(u.prompt_tokens for u in usages)
    assert totals["completion_tokens"] == sum(u.completion_tokens for u in usages)
    assert (totals["requests"], totals["errors"]) == (5, 1)  # four answers and the 404 for the other model
