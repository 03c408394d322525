"""Autoscaling from the spec against a real `aana up` (Ray Serve on CPU, the echo engine): slow streams make the
model scale from 1 replica to 2, and it scales back once they stop, as `aana status --json` reports it."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import jsonschema
import pytest
from e2e.server import AanaServer, run_aana, serving

from runtime.status import STATUS_SCHEMA

pytestmark = pytest.mark.e2e

WORDS = " ".join(f"w{i}" for i in range(20))  # a 4 s stream at 0.2 s a token
STREAMS = 6
# Serve's replicas and handles report their load every 10 s and the autoscaler averages it over look_back_period_s:
# a hang guard, far beyond the two or three reports each step takes.
HANG_GUARD_S = 90

# One client's stream is enough to want a second replica (target 1); the shortest window Serve allows, and no delays
# beyond it, keep the test short. num_cpus 0.2: two replicas fit on two cores beside Ray.
SPEC = """
name = "autoscale"
[deployments.echo]
engine = "echo"
num_cpus = 0.2
token_delay_s = 0.2
[deployments.echo.autoscaling]
min_replicas = 1
max_replicas = 2
target_ongoing_requests = 1
upscale_delay_s = 0
downscale_delay_s = 1
look_back_period_s = 11
"""


class Load:
    """STREAMS clients that each stream one chat completion after another until stopped; every stream is kept."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.stop = threading.Event()
        self.streams: list[tuple[int, list[str]]] = []
        self.errors: list[httpx.HTTPError] = []
        self.thread = threading.Thread(target=asyncio.run, args=(self._run(),), daemon=True)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)

    async def _run(self) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=60) as client:
            await asyncio.gather(*(self._client(client) for _ in range(STREAMS)))

    async def _client(self, client: httpx.AsyncClient) -> None:
        body = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": WORDS}]}
        while not self.stop.is_set():
            try:
                async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    lines = [line async for line in response.aiter_lines() if line]
                    self.streams.append((response.status_code, lines))
            except httpx.HTTPError as exc:  # kept for the test to report; the load goes on
                self.errors.append(exc)


def _echo_status() -> tuple[int, dict]:
    result = run_aana("status", "--json", timeout_s=120)
    snapshot = json.loads(result.stdout)
    jsonschema.validate(snapshot, STATUS_SCHEMA)
    [app] = snapshot["apps"]
    [echo] = [d for d in app["deployments"] if d["name"] == "echo"]
    return result.returncode, echo


def _wait_for_replicas(server: AanaServer, running: int) -> tuple[int, dict]:
    """Poll `aana status --json` until the echo model has `running` replicas running, that many as its target and
    none in another state; the last answer."""
    deadline = time.monotonic() + HANG_GUARD_S
    seen = []
    while True:
        code, echo = _echo_status()
        seen.append((echo["status"], echo["replicas"], echo["target_replicas"]))
        if echo["replicas"] == {"RUNNING": running} and echo["target_replicas"] == running:
            return code, echo
        assert time.monotonic() < deadline, f"never {running} replica(s); status said {seen}\n{server.output()}"
        time.sleep(1)


def test_load_scales_the_model_up_to_max_replicas_and_back_down_once_it_stops(tmp_path, monkeypatch):
    monkeypatch.setenv("AANA_STATE_DIR", str(tmp_path / "state"))  # only this run's record for `aana status`
    spec = tmp_path / "autoscale.toml"
    spec.write_text(SPEC)
    with serving(spec, tmp_path) as server:
        code, echo = _echo_status()
        assert (code, echo["replicas"], echo["target_replicas"]) == (0, {"RUNNING": 1}, 1)
        assert echo["autoscaling"] == {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1.0}

        with Load(server.base_url) as load:
            code, echo = _wait_for_replicas(server, 2)
            assert code == 0, echo  # healthy: HEALTHY, or UPSCALING while Serve settles
            assert "2/2 (1-2)" in run_aana("status", timeout_s=120).stdout
        assert load.errors == [] and load.streams, f"{len(load.streams)} streams, errors: {load.errors}"
        for status, lines in load.streams:
            assert status == 200 and lines[-1] == "data: [DONE]", lines[-3:]
            text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or "" for line in lines[:-1])
            assert text == WORDS

        code, echo = _wait_for_replicas(server, 1)
        assert code == 0, echo
