"""The shipped specs through `aana up`: the embedded default answers, and the GPU spec fails fast on this machine."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import openai
import pytest
from e2e.openai_checks import (
    check_choices_and_logprobs,
    check_completions,
    check_embeddings,
    check_json_object,
    check_json_schema,
    check_langchain,
    check_models,
    check_named_tool_round_trip,
    check_responses,
)
from e2e.server import free_port, model_load, run_aana, serving, wait_until_idle
from e2e.test_cli_logs_chat import ask

pytestmark = pytest.mark.e2e
SPECS = Path(__file__).parents[2] / "specs"


def test_the_default_app_serves_chat_completions_responses_and_embeddings(tmp_path):
    pytest.importorskip("gguf")
    with serving(SPECS / "smollm2.toml", tmp_path, timeout_s=600) as server:
        client = openai.OpenAI(api_key="x", base_url=server.base_url, max_retries=0, timeout=120)
        answer = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "What is the capital of France?"}]
        )
        assert "Paris" in answer.choices[0].message.content
        assert answer.choices[0].finish_reason == "stop"
        # Not just UPDATING while the model loads: the replica's own steps (each takes seconds here).
        assert re.search(r"smollm2: UPDATING, (importing torch|loading the weights|warming up)", server.output())
        _dropped_stream_stops_the_generation(server, client)
        for check in (check_json_schema, check_json_object, check_named_tool_round_trip, check_choices_and_logprobs,
                      check_completions, check_responses):  # fmt: skip
            check(client, "smollm2")
        check_models(client, ["smollm2", "minilm"])
        check_embeddings(client, "minilm")
        check_langchain(f"{server.base_url}/v1", "smollm2", "minilm")
        assert "Paris" in ask(server.base_url, "smollm2", "What is the capital of France?")  # aana chat, one-shot


def _dropped_stream_stops_the_generation(server, client):
    """1900 tokens past EOS would keep SmolLM2 busy for minutes here (~10 tok/s); stopped when the client hangs up,
    the batch drops the request within a step and the model is idle again."""
    hi = [{"role": "user", "content": "Hi"}]
    before = client.chat.completions.create(model="smollm2", max_tokens=5, messages=hi).choices[0].message.content
    body = {"model": "smollm2", "stream": True, "max_tokens": 1900, "ignore_eos": True, "temperature": 1.0, "seed": 1,
            "messages": [{"role": "user", "content": "Write a very long story about a dragon."}]}  # fmt: skip
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()  # kept referenced: a closed line iterator closes the connection
        for _ in range(5):
            next(lines)
        assert model_load(server, "smollm2")["running"] == 1
    # Leaving the block hangs up mid-stream.
    wait_until_idle(server, "smollm2", hang_guard_s=30)
    after = client.chat.completions.create(model="smollm2", max_tokens=5, messages=hi).choices[0].message.content
    assert after == before


def test_llama2_spec_without_a_gpu_fails_fast_naming_the_gpu():
    result = run_aana("up", str(SPECS / "llama2.toml"), "--port", str(free_port()), timeout_s=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "llm_deployment" in result.stderr and "GPU" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    # Fast: found before Ray starts, so there is no Ray to stop (`aana up` says "stopped" once it has stopped one).
    assert "stopped" not in result.stderr


def test_missing_model_path_fails_before_ray_starts(tmp_path):
    spec = tmp_path / "missing.toml"
    spec.write_text('name = "m"\n[deployments.ghost]\nengine = "transformers"\nmodel = "./no/such/model"\n')
    result = run_aana("up", str(spec), "--port", str(free_port()), timeout_s=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "deployments.ghost.model" in result.stderr and "does not exist" in result.stderr
    assert "stopped" not in result.stderr  # no Ray was started, so none was stopped


def test_replica_that_fails_to_load_shows_its_error(tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    spec = tmp_path / "broken.toml"
    spec.write_text(f'name = "b"\n[deployments.broken]\nengine = "transformers"\nmodel = "{empty}"\nnum_cpus = 0.5\n')
    # The deploy deadline (--timeout) lies beyond the hang guard (timeout_s): `aana up` must give up because it saw
    # the replica fail, never because it waited the deadline out.
    result = run_aana("up", str(spec), "--migrate", "--port", str(free_port()), "--timeout", "900", timeout_s=400)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "broken" in result.stderr and "not-a-model" in result.stderr
    assert "DEPLOYING" not in result.stderr.splitlines()[-1]
    assert "not running after" not in result.stderr
    assert "stopped" in result.stderr  # the Ray it started was stopped again


def test_invalid_spec_exits_1_naming_the_key(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text('name = "b"\n[deployments.x]\nengine = "echo"\n[deployments.x.sampling]\ntemprature = 0\n')
    result = run_aana("up", str(spec), timeout_s=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "deployments.x.sampling.temprature" in result.stderr and "temperature" in result.stderr
