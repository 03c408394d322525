"""`aana status` pieces without a cluster: the snapshot shape (validated against the documented schema), exit codes,
and the rich view at a pinned width."""

import jsonschema
import pytest
from rich.console import Console

from aana_cli import console
from runtime.status import STATUS_SCHEMA, exit_code, snapshot_from

NODES = [{"NodeID": "n1", "NodeManagerAddress": "10.0.0.1", "Alive": True}]
TOTAL = {"CPU": 2.0, "memory": 16 * 1024**3}
AVAILABLE = {"CPU": 1.4, "memory": 16 * 1024**3}


def _details(app_status="RUNNING", model_status="HEALTHY", message="", replica_state="RUNNING", tiny=None):
    """Serve's instance details as `get_serve_details()` returns them; `tiny` replaces keys of the model's entry."""
    return {
        "http_options": {"host": "127.0.0.1", "port": 8000},
        "applications": {
            "tiny-app": {
                "name": "tiny-app",
                "route_prefix": "/",
                "status": app_status,
                "message": "",
                "last_deployed_time_s": 1000.0,
                "deployments": {
                    "tiny": {
                        "name": "tiny",
                        "status": model_status,
                        "message": message,
                        "deployment_config": {"name": "tiny", "num_replicas": 1},
                        "target_num_replicas": 1,
                        "replicas": [{"state": replica_state}],
                    }
                    | (tiny or {}),
                    "OpenAIIngress": {
                        "name": "OpenAIIngress",
                        "status": "HEALTHY",
                        "message": "",
                        "deployment_config": {"name": "OpenAIIngress", "num_replicas": 1},
                        "target_num_replicas": 1,
                        "replicas": [{"state": "RUNNING"}],
                    },
                },
            }
        },
    }


def test_healthy_snapshot_matches_the_schema_and_exits_0():
    snapshot = snapshot_from("10.0.0.1:6379", NODES, TOTAL, AVAILABLE, _details(), now=1010.0)
    jsonschema.validate(snapshot, STATUS_SCHEMA)
    assert snapshot["healthy"] and exit_code(snapshot) == 0
    [app] = snapshot["apps"]
    assert app["endpoint"] == "http://localhost:8000/v1"
    assert app["models"] == ["tiny"]
    assert app["deploying_for_s"] is None
    assert snapshot["cluster"]["resources"]["CPU"] == {"used": pytest.approx(0.6), "total": 2.0}
    roles = {d["name"]: d["role"] for d in app["deployments"]}
    assert roles == {"tiny": "model", "OpenAIIngress": "ingress"}


def test_deploying_app_says_for_how_long_and_exits_1():
    details = _details(app_status="DEPLOYING", model_status="UPDATING", replica_state="STARTING")
    snapshot = snapshot_from("a", NODES, TOTAL, AVAILABLE, details, now=1042.0)
    jsonschema.validate(snapshot, STATUS_SCHEMA)
    assert snapshot["apps"][0]["deploying_for_s"] == 42.0
    assert snapshot["apps"][0]["deployments"][0]["replicas"] == {"STARTING": 1}
    assert exit_code(snapshot) == 1


def test_failed_deployment_keeps_its_message_and_exits_1():
    details = _details(
        app_status="DEPLOY_FAILED", model_status="DEPLOY_FAILED", message="boom\nRuntimeError: no such model"
    )
    snapshot = snapshot_from("a", NODES, TOTAL, AVAILABLE, details, now=1000.0)
    assert snapshot["apps"][0]["deployments"][0]["message"].endswith("no such model")
    assert exit_code(snapshot) == 1


def test_no_serve_means_nothing_running():
    snapshot = snapshot_from("a", NODES, TOTAL, AVAILABLE, {}, now=0.0)
    jsonschema.validate(snapshot, STATUS_SCHEMA)
    assert snapshot["apps"] == [] and not snapshot["healthy"] and exit_code(snapshot) == 2


def test_enum_statuses_become_plain_names():
    from ray.serve.schema import ApplicationStatus, DeploymentStatus

    details = _details(app_status=ApplicationStatus.RUNNING, model_status=DeploymentStatus.HEALTHY)
    snapshot = snapshot_from("a", NODES, TOTAL, AVAILABLE, details, now=0.0)
    assert snapshot["apps"][0]["status"] == "RUNNING"
    assert snapshot["apps"][0]["deployments"][0]["status"] == "HEALTHY"


@pytest.mark.parametrize("width", [80, 100])
def test_rich_view_at_a_pinned_width(monkeypatch, width):
    pinned = Console(width=width, record=True, color_system=None)
    monkeypatch.setattr(console, "out", pinned)
    details = _details(model_status="UNHEALTHY", message="Traceback...\nRuntimeError: engine core died")
    snapshot = snapshot_from("10.0.0.1:6379", NODES, TOTAL, AVAILABLE, details, now=0.0)
    snapshot["apps"][0]["requests"] = {
        "tiny": {
            "count": 3,
            "errors": 1,
            "ttft_ms": {"p50": 12.0, "p95": 30.0},
            "latency_ms": {"p50": 90.0, "p95": 150.0},
        }
    }
    jsonschema.validate(snapshot, STATUS_SCHEMA)
    console.status_view(snapshot)
    text = pinned.export_text()
    assert "cluster 10.0.0.1:6379: 1/1 node(s) alive, CPU 0.6/2" in text
    assert "app tiny-app RUNNING  http://localhost:8000/v1" in text
    assert "UNHEALTHY" in text and "RuntimeError: engine core died" in text
    assert "3/1" in text and "12/30" in text and "90/150" in text
    assert "tiny" in text and "OpenAIIngress (ingress)" in text  # the names never squeeze out
    assert max(len(line) for line in text.splitlines() if not line.startswith("cluster")) <= width


# What Serve reports for a deployment with an autoscaling_config while the autoscaler adds a second replica.
UPSCALING = {
    "status": "UPSCALING",
    "message": "Upscaling from 1 to 2 replicas.",
    "deployment_config": {
        "name": "tiny",
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 1.0},
    },
    "target_num_replicas": 2,
    "replicas": [{"state": "RUNNING"}, {"state": "STARTING"}],
}


def test_target_and_autoscaling_bounds_of_each_deployment():
    snapshot = snapshot_from("a", NODES, TOTAL, AVAILABLE, _details(tiny=UPSCALING), now=0.0)
    jsonschema.validate(snapshot, STATUS_SCHEMA)
    tiny, ingress = snapshot["apps"][0]["deployments"]
    assert tiny["replicas"] == {"RUNNING": 1, "STARTING": 1}
    assert tiny["target_replicas"] == 2
    assert tiny["autoscaling"] == {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 1.0}
    assert (ingress["target_replicas"], ingress["autoscaling"]) == (1, None)


def test_a_deployment_the_autoscaler_is_resizing_is_healthy():
    for status in ("UPSCALING", "DOWNSCALING"):
        snapshot = snapshot_from("a", NODES, TOTAL, AVAILABLE, _details(tiny=UPSCALING | {"status": status}), 0.0)
        assert snapshot["healthy"] and exit_code(snapshot) == 0


def test_a_deployment_without_a_target_from_serve_reads_null():
    bare = {"deployment_config": {}, "target_num_replicas": None}
    snapshot = snapshot_from("a", NODES, TOTAL, AVAILABLE, _details(tiny=bare), now=0.0)
    jsonschema.validate(snapshot, STATUS_SCHEMA)
    tiny = snapshot["apps"][0]["deployments"][0]
    assert (tiny["target_replicas"], tiny["autoscaling"]) == (None, None)


def test_rich_view_shows_running_over_target_and_the_autoscaling_bounds(monkeypatch):
    pinned = Console(width=80, record=True, color_system=None)
    monkeypatch.setattr(console, "out", pinned)
    snapshot = snapshot_from("a", NODES, TOTAL, AVAILABLE, _details(tiny=UPSCALING), now=0.0)
    console.status_view(snapshot)
    text = pinned.export_text()
    rows = {line.split()[1]: line for line in text.splitlines() if line.startswith("│")}
    assert "UPSCALING" in rows["tiny"] and "1/2 (1-3)" in rows["tiny"]
    assert "1/1 " in rows["OpenAIIngress"] and "(1-" not in rows["OpenAIIngress"]
    assert "running/target (min-max when autoscaled)" in " ".join(text.split())
    assert "tiny: Upscaling from 1 to 2 replicas." in text  # what the autoscaler does, shown beside the table
    assert max(len(line) for line in text.splitlines()) <= 80
    # Without a target from Serve the cell counts each state, as before.
    pinned = Console(width=80, record=True, color_system=None)
    monkeypatch.setattr(console, "out", pinned)
    bare = {"deployment_config": {}, "target_num_replicas": None, "replicas": [{"state": "RUNNING"}]}
    console.status_view(snapshot_from("a", NODES, TOTAL, AVAILABLE, _details(tiny=bare), now=0.0))
    assert "1 running" in pinned.export_text()


def test_each_replicas_node_is_in_the_snapshot_and_shown_when_the_cluster_has_several(monkeypatch):
    nodes = [*NODES, {"NodeID": "n2second", "NodeManagerAddress": "10.0.0.2", "Alive": False}]
    placed = {"replicas": [{"state": "RUNNING", "node_id": "n2second", "node_ip": "10.0.0.2"}, {"state": "PENDING"}]}
    snapshot = snapshot_from("a", nodes, TOTAL, AVAILABLE, _details(tiny=placed), now=0.0)
    jsonschema.validate(snapshot, STATUS_SCHEMA)
    [tiny] = [d for d in snapshot["apps"][0]["deployments"] if d["name"] == "tiny"]
    assert tiny["placement"] == [
        {"node_id": "n2second", "node_ip": "10.0.0.2", "state": "RUNNING"},
        {"node_id": "", "node_ip": "", "state": "PENDING"},
    ]
    pinned = Console(width=80, record=True, color_system=None)
    monkeypatch.setattr(console, "out", pinned)
    console.status_view(snapshot)
    assert "tiny on node n2second 10.0.0.2 (running), no node yet (pending)" in pinned.export_text()
    one_node = Console(width=80, record=True, color_system=None)
    monkeypatch.setattr(console, "out", one_node)
    console.status_view(snapshot_from("a", NODES, TOTAL, AVAILABLE, _details(tiny=placed), now=0.0))
    assert " on " not in one_node.export_text().split("tiny")[-1]  # one node: placement says nothing
