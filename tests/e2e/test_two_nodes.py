"""A real two-node Ray cluster on this machine (a head and a second node, each its own raylet with resources of its
own): `aana up --address` places a model on the node that has the custom resource its spec asks for, `aana status`
shows where each replica runs, a node that goes away makes the deployment unhealthy with the reason, and a node
that comes back heals it."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import openai
import pytest
from e2e.ray_cluster import CLUSTER_ENV, RayNode, ray_head, wait_for
from e2e.server import run_aana, serving

pytestmark = pytest.mark.e2e

SPEC = """
name = "twonodes"
[server]
ingress = "separate"      # on the head: the endpoint stays up while the second node is away
[deployments.pinned]
engine = "echo"
num_cpus = 0.5
resources = { second_node = 1 }
"""
HI = [{"role": "user", "content": "hello from the second node"}]


def _status(gcs: str) -> tuple[int, dict]:
    done = run_aana("status", "--address", gcs, "--json", timeout_s=120)
    return done.returncode, json.loads(done.stdout)


def _pinned(snapshot: dict) -> dict:
    [app] = snapshot["apps"]
    return next(d for d in app["deployments"] if d["name"] == "pinned")


def test_a_model_runs_on_the_node_with_its_resource_and_recovers_when_the_node_returns(tmp_path, monkeypatch):
    for key, value in CLUSTER_ENV.items():
        monkeypatch.setenv(key, value)
    spec = tmp_path / "twonodes.toml"
    spec.write_text(SPEC)
    env = dict(os.environ)
    with ray_head(tmp_path / "head.log", env, dashboard=False, resources={"head_node": 1}) as (gcs, _):
        second = RayNode(gcs, tmp_path / "second.log", env, num_cpus=1, resources={"second_node": 1}).start()
        try:
            with serving(spec, tmp_path, args=("--address", gcs)) as server:
                client = openai.OpenAI(api_key="x", base_url=f"{server.base_url}/v1", max_retries=0, timeout=60)
                reply = client.chat.completions.create(model="pinned", messages=HI)
                assert reply.choices[0].message.content == HI[0]["content"]

                code, snapshot = _status(gcs)
                assert code == 0 and len(snapshot["cluster"]["nodes"]) == 2
                placement = _pinned(snapshot)["placement"]
                assert [(p["node_id"], p["state"]) for p in placement] == [(second.node_id, "RUNNING")]
                table = run_aana("status", "--address", gcs).stdout
                assert f"pinned on node {second.node_id[:8]}" in table

                second.stop()  # the machine goes away
                wait_for(lambda: _status(gcs)[0] == 1, "aana status reporting the loss", 120,
                         lambda: json.dumps(_status(gcs)[1], indent=1))  # fmt: skip
                code, snapshot = _status(gcs)
                pinned = _pinned(snapshot)
                assert pinned["status"] != "HEALTHY" and pinned["message"], pinned
                table = run_aana("status", "--address", gcs).stdout
                assert "pinned:" in table  # the reason, beside the table

                second = RayNode(gcs, tmp_path / "second-again.log", env, num_cpus=1,
                                 resources={"second_node": 1}).start()  # fmt: skip
                wait_for(lambda: _status(gcs)[0] == 0, "the deployment healing", 180,
                         lambda: json.dumps(_status(gcs)[1], indent=1))  # fmt: skip
                reply = client.chat.completions.create(model="pinned", messages=HI)
                assert reply.choices[0].message.content == HI[0]["content"]
                assert _pinned(_status(gcs)[1])["placement"][0]["node_id"] == second.node_id
        finally:
            second.stop()


def test_the_embedded_default_starts_its_own_ray_beside_a_dead_ray_start_cluster(tmp_path, monkeypatch):
    """`ray start` leaves the newest cluster's address in its temp dir, and a plain ray.init joins it, dead or
    alive: the embedded default must start a Ray of its own instead (a dead one hung aana up here)."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    spec = tmp_path / "alone.toml"
    spec.write_text('name = "alone"\n[deployments.echo]\nengine = "echo"\nnum_cpus = 0.2\n')
    try:
        with serving(spec, tmp_path, timeout_s=120) as server:
            client = openai.OpenAI(api_key="x", base_url=f"{server.base_url}/v1", max_retries=0, timeout=60)
            assert client.chat.completions.create(model="echo", messages=HI).choices[0].message.content
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
