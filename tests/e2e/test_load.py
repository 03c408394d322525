"""Many clients at once against a real `aana up` (Ray Serve on CPU, the echo engine): admission with 429, deadlines,
health that answers under load, a replica that dies mid-stream, and a run whose `aana up` was killed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import time

import httpx
import pytest
from e2e.server import AanaServer, run_aana, serving, wait_until_idle

pytestmark = pytest.mark.e2e

WORDS = " ".join(f"w{i}" for i in range(10))


def _spec(tmp_path, body: str, server: str = "") -> object:
    spec = tmp_path / "load.toml"
    spec.write_text(f'name = "load"\n[server]\n{server}\n[deployments.echo]\nengine = "echo"\nnum_cpus = 0.2\n{body}')
    return spec


async def _burst(base_url: str, n: int) -> tuple[list[httpx.Response], list[httpx.Response]]:
    """n chat requests at once, and GET /health probes while they run."""
    body = {"model": "echo", "messages": [{"role": "user", "content": WORDS}]}
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        chats = [asyncio.create_task(client.post("/v1/chat/completions", json=body)) for _ in range(n)]
        probes = []
        while not all(task.done() for task in chats):
            probes.append(await client.get("/health"))
            await asyncio.sleep(0.2)
        return [task.result() for task in chats], probes


def test_a_burst_beyond_capacity_gets_429_with_retry_after_and_health_stays_ready(tmp_path):
    # Each request takes ~2 s (10 words x 0.2 s); the model admits 2 running + 2 queued.
    spec = _spec(tmp_path, "token_delay_s = 0.2\nmax_ongoing_requests = 2\nmax_queued_requests = 2\n")
    with serving(spec, tmp_path) as server:
        responses, probes = asyncio.run(_burst(server.base_url, 30))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 4 + [429] * 26
    for refused in (r for r in responses if r.status_code == 429):
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert all(r.json()["choices"][0]["message"]["content"] == WORDS for r in responses if r.status_code == 200)
    assert probes and all(p.status_code == 200 for p in probes), [p.text for p in probes]
    assert any(p.json()["models"]["echo"]["running"] > 0 for p in probes)  # busy, and still ready


def test_a_request_past_its_deadline_gets_504_or_an_error_event_and_the_model_stops(tmp_path):
    spec = _spec(tmp_path, "token_delay_s = 3\n[deployments.fast]\nengine = \"echo\"\nnum_cpus = 0.2\n"
                 "token_delay_s = 0.5\n", server="request_timeout_s = 2")  # fmt: skip
    with serving(spec, tmp_path) as server:
        slow = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=60,
                          json={"model": "echo", "messages": [{"role": "user", "content": WORDS}]})  # fmt: skip
        assert slow.status_code == 504, slow.text
        assert slow.json()["error"]["code"] == "timeout"
        with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", timeout=60, json={
            "model": "fast", "stream": True, "messages": [{"role": "user", "content": WORDS}],
        }) as response:  # fmt: skip
            assert response.status_code == 200
            lines = [line for line in response.iter_lines() if line]
        assert lines[-1] == "data: [DONE]"
        assert json.loads(lines[-2][6:])["error"]["code"] == "timeout"
        assert any('"content":"w0"' in line for line in lines)
        wait_until_idle(server, "echo", hang_guard_s=30)
        wait_until_idle(server, "fast", hang_guard_s=30)


def _replica_pids(deployment: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"ServeReplica:load:{deployment}"], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]


def test_a_replica_that_dies_mid_stream_ends_the_stream_readably_and_comes_back(tmp_path):
    # With a separate ingress, the stream outlives the model replica and can say what happened.
    spec = _spec(tmp_path, "token_delay_s = 0.5\n", server='ingress = "separate"')
    with serving(spec, tmp_path) as server:
        url = f"{server.base_url}/v1/chat/completions"
        body = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": WORDS * 4}]}
        with httpx.stream("POST", url, json=body, timeout=60) as response:
            lines = response.iter_lines()
            assert '"role":"assistant"' in next(line for line in lines if line)
            [pid] = _replica_pids("echo")
            os.kill(pid, signal.SIGKILL)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        error = json.loads(rest[-2][6:])["error"]
        assert error["type"] == "service_unavailable" and "replica serving this request stopped" in error["message"]
        for internal in ("Actor", "actor_id", "pid=", "ip=", "ray::"):
            assert internal not in error["message"]
        deadline = time.monotonic() + 120  # hang guard: Ray restarts a replica in seconds
        while (reply := httpx.post(url, json=body | {"stream": False}, timeout=60)).status_code != 200:
            assert reply.status_code == 503 and time.monotonic() < deadline, reply.text
            time.sleep(0.5)
        assert reply.json()["choices"][0]["finish_reason"] == "stop"


def test_a_single_model_replica_that_dies_mid_stream_cuts_its_stream_and_comes_back(tmp_path):
    # An app of one model answers HTTP from the model replica itself: its streams end with it (as a dying `vllm
    # serve` process's would), and the next request is served by its replacement.
    spec = _spec(tmp_path, "token_delay_s = 0.5\n")
    with serving(spec, tmp_path) as server:
        url = f"{server.base_url}/v1/chat/completions"
        body = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": WORDS * 4}]}
        with pytest.raises(httpx.RemoteProtocolError), httpx.stream("POST", url, json=body, timeout=60) as response:
            lines = response.iter_lines()
            assert '"role":"assistant"' in next(line for line in lines if line)
            [pid] = _replica_pids("echo")
            os.kill(pid, signal.SIGKILL)
            for _ in lines:
                pass
        reply = httpx.post(url, json=body | {"stream": False}, timeout=120)  # waits at the proxy for the replacement
        assert reply.status_code == 200 and reply.json()["choices"][0]["finish_reason"] == "stop", reply.text


def test_a_dead_engine_core_is_not_ready_until_ray_replaces_the_replica(tmp_path, tiny_model_dir):
    pytest.importorskip("vllm")
    spec = tmp_path / "vllm.toml"
    spec.write_text(
        f'name = "load"\n[server]\ningress = "separate"\n[deployments.tiny]\nengine = "vllm"\nmodel = "{tiny_model_dir}"\n'
        "num_cpus = 1\n"
        "max_model_len = 512\nkv_cache_space_gb = 1\n"
    )
    with serving(spec, tmp_path) as server:
        url = f"{server.base_url}/v1/chat/completions"
        body = {"model": "tiny", "stream": True, "max_tokens": 480, "ignore_eos": True,
                "messages": [{"role": "user", "content": "Hello"}]}  # fmt: skip
        # Found before the request, so that the kill follows the first chunk at once, well before the last token.
        cores = subprocess.run(["pgrep", "-f", "EngineCore"], capture_output=True, text=True).stdout.split()
        assert cores, "no vLLM engine core process found"
        with httpx.stream("POST", url, json=body, timeout=120) as response:
            lines = response.iter_lines()
            assert '"role":"assistant"' in next(line for line in lines if line)
            for pid in cores:
                os.kill(int(pid), signal.SIGKILL)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        last = json.loads(rest[-2][6:])
        assert "error" in last, f"the stream ended without an error after killing {cores}: {rest[-2]}"
        message = last["error"]["message"]
        assert "engine died" in message
        for internal in ("Actor", "actor_id", "pid=", "ip=", "ray::", "Traceback"):
            assert internal not in message
        seen_down = seen_up = False
        deadline = time.monotonic() + 240  # hang guard: a new replica starts vLLM again (~30-60 s here)
        while not seen_up and time.monotonic() < deadline:
            health = httpx.get(f"{server.base_url}/health", timeout=30)
            seen_down = seen_down or (
                health.status_code == 503 and health.json()["models"]["tiny"]["status"] != "ready"
            )
            seen_up = seen_down and health.status_code == 200
            time.sleep(0.5)
        assert seen_down, "GET /health never reported the dead engine"
        assert seen_up, "the model never came back after its engine core died"
        assert httpx.post(url, json=body | {"stream": False, "max_tokens": 5}, timeout=120).status_code == 200


def test_a_run_whose_aana_up_was_killed_is_marked_lost(tmp_path, monkeypatch):
    monkeypatch.setenv("AANA_STATE_DIR", str(tmp_path / "state"))
    db = tmp_path / "aana.db"
    spec = _spec(tmp_path, "")
    server = AanaServer(spec, tmp_path, args=("--database-url", f"sqlite:///{db}")).start()
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()
    deadline = time.monotonic() + 60  # hang guard: the killed Ray's processes go with their group
    while subprocess.run(["pgrep", "-f", "ServeReplica:load:"], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "Ray's processes outlived the killed aana up"
        time.sleep(0.5)
    with sqlite3.connect(db) as conn:
        assert conn.execute("select state from runs").fetchall() == [("running",)]
    status = run_aana("status", "--database-url", f"sqlite:///{db}", timeout_s=120)
    assert "marked run" in status.stderr and "lost" in status.stderr, status.stdout + status.stderr
    with sqlite3.connect(db) as conn:
        [(state, stopped, error)] = conn.execute("select state, stopped_at, error from runs").fetchall()
    assert state == "lost" and stopped is not None and "ended without stopping the run" in error


async def _open_and_cut(base_url: str, n: int) -> None:
    """n streams at once; each is cut as soon as its first content chunk arrives."""
    body = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": WORDS * 50}]}

    async def one(client: httpx.AsyncClient) -> None:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if '"content":"w0"' in line:
                    return  # leaving the block closes the connection mid-stream

    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:
        await asyncio.gather(*(one(client) for _ in range(n)))


def test_a_storm_of_cut_streams_stops_every_generation_and_records_each_as_499(tmp_path):
    db = tmp_path / "aana.db"
    spec = _spec(tmp_path, "token_delay_s = 0.2\nmax_ongoing_requests = 100\n")
    with serving(spec, tmp_path, args=("--database-url", f"sqlite:///{db}")) as server:
        asyncio.run(_open_and_cut(server.base_url, 100))
        wait_until_idle(server, "echo", hang_guard_s=30)  # 500 words x 0.2 s each would keep it busy for 100 s
        deadline = time.monotonic() + 30  # hang guard: the recorder writes every second
        while True:
            with sqlite3.connect(db) as conn:
                rows = conn.execute("select status_code, finish_reason from requests").fetchall()
            if len(rows) >= 100 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        status = run_aana("status", "--json", "--database-url", f"sqlite:///{db}", timeout_s=120)
    assert rows == [(499, "abort")] * 100
    [app] = [a for a in json.loads(status.stdout)["apps"] if a["name"] == "load"]
    assert (app["requests"]["echo"]["count"], app["requests"]["echo"]["errors"]) == (100, 0)  # a cut is no error


def test_with_two_ingress_replicas_killing_one_fails_only_its_requests_in_flight(tmp_path):
    import threading

    spec = _spec(tmp_path, "token_delay_s = 0.05\nmax_ongoing_requests = 8\n", server="ingress_replicas = 2")
    with serving(spec, tmp_path) as server:
        ingresses = _replica_pids("OpenAIIngress")
        assert len(ingresses) == 2
        url = f"{server.base_url}/v1/chat/completions"
        body = {"model": "echo", "messages": [{"role": "user", "content": WORDS}]}
        outcomes: list[tuple[float, int]] = []  # (when it ended, status; 0 = the connection failed)
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(timeout=60) as http:
                while not stop.is_set():
                    try:
                        status = http.post(url, json=body).status_code
                    except httpx.HTTPError:
                        status = 0
                    outcomes.append((time.monotonic(), status))

        workers = [threading.Thread(target=client) for _ in range(4)]
        for worker in workers:
            worker.start()
        while len(outcomes) < 20:  # a steady stream is flowing through both replicas
            time.sleep(0.1)
        os.kill(ingresses[0], signal.SIGKILL)
        killed_at = time.monotonic()
        while len([t for t, _ in outcomes if t > killed_at + 5]) < 20:  # and keeps flowing afterwards
            time.sleep(0.1)
        stop.set()
        for worker in workers:
            worker.join()
    failed = [status for _, status in outcomes if status != 200]
    assert len(failed) <= len(workers), failed  # at most the requests in flight on the killed replica
    assert all(status == 200 for t, status in outcomes if t > killed_at + 5)
