"""The shipped specs through `aana up`: the embedded default answers, and the GPU spec fails fast on this machine."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest

from e2e.server import AanaServer, run_aana

pytestmark = pytest.mark.e2e
SPECS = Path(__file__).parents[2] / "specs"


def test_smollm2_default_spec_knows_the_capital_of_france(tmp_path):
    pytest.importorskip("gguf")
    server = AanaServer(SPECS / "smollm2.toml", tmp_path).start(timeout_s=600)
    try:
        client = openai.OpenAI(api_key="x", base_url=server.base_url, max_retries=0, timeout=120)
        answer = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "What is the capital of France?"}]
        )
        assert "Paris" in answer.choices[0].message.content
        assert answer.choices[0].finish_reason == "stop"
        _dropped_stream_stops_the_generation(server, client)
    finally:
        assert server.stop() == 0, server.output()


def _dropped_stream_stops_the_generation(server, client):
    """SmolLM2 decodes ~15 tok/s here and one replica generates one request at a time: had the 600-token stream
    gone on after the client hung up, the next request would wait ~40 s behind it."""
    body = {"model": "smollm2", "stream": True, "max_tokens": 600, "temperature": 1.0, "seed": 1,
            "messages": [{"role": "user", "content": "Write a very long story about a dragon."}]}  # fmt: skip
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        for i, _ in enumerate(response.iter_lines()):
            if i >= 4:
                break
    started = time.monotonic()
    reply = client.chat.completions.create(model="smollm2", max_tokens=5, messages=[{"role": "user", "content": "Hi"}])
    assert reply.usage.completion_tokens <= 5
    assert time.monotonic() - started < 15


def test_llama2_spec_without_a_gpu_fails_fast_naming_the_gpu():
    started = time.monotonic()
    result = run_aana("up", str(SPECS / "llama2.toml"), "--port", "18931", timeout_s=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    assert elapsed < 30
    assert "llm_deployment" in result.stderr and "GPU" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_missing_model_path_fails_before_ray_starts(tmp_path):
    spec = tmp_path / "missing.toml"
    spec.write_text('name = "m"\n[deployments.ghost]\nengine = "transformers"\nmodel = "./no/such/model"\n')
    result = run_aana("up", str(spec), timeout_s=60)
    assert result.returncode == 1
    assert "deployments.ghost.model" in result.stderr and "does not exist" in result.stderr


def test_replica_that_fails_to_load_shows_its_error(tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    spec = tmp_path / "broken.toml"
    spec.write_text(f'name = "b"\n[deployments.broken]\nengine = "transformers"\nmodel = "{empty}"\nnum_cpus = 0.5\n')
    started = time.monotonic()
    result = run_aana("up", str(spec), "--migrate", "--port", "18932", "--timeout", "120", timeout_s=180)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "broken" in result.stderr and "not-a-model" in result.stderr
    assert "DEPLOYING" not in result.stderr.splitlines()[-1]
    assert time.monotonic() - started < 120


def test_invalid_spec_exits_1_naming_the_key(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text('name = "b"\n[deployments.x]\nengine = "echo"\n[deployments.x.sampling]\ntemprature = 0\n')
    result = run_aana("up", str(spec), timeout_s=60)
    assert result.returncode == 1
    assert "deployments.x.sampling.temprature" in result.stderr and "temperature" in result.stderr
