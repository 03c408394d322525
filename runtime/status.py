"""What runs: one JSON-ready snapshot of the Ray cluster, its Serve apps, deployments, replicas and endpoints.

Pure: `runtime.cluster.read_snapshot` asks Ray and `snapshot_from()` turns the raw answers into the documented
shape (STATUS_SCHEMA), so the shape is tested without a cluster. Exit codes for `aana status` are derived here too.
"""

from __future__ import annotations

from typing import Any

from runtime.errors import NothingRunning
from runtime.plan import INGRESS_NAME, base_url

SCHEMA_ID = "aana.status/1"

# 2 (nothing running) and 3 (unreachable) are the exit codes of runtime.errors.NothingRunning and Unreachable.
EXIT_HEALTHY, EXIT_UNHEALTHY, EXIT_NOTHING = 0, 1, NothingRunning.exit_code
# Deployment statuses of a deployment that serves: autoscaling moves a healthy one to UPSCALING or DOWNSCALING.
SERVING = ("HEALTHY", "UPSCALING", "DOWNSCALING")

_num = {"type": "number"}
_str_or_null = {"type": ["string", "null"]}
_used_total = {
    "type": "object",
    "required": ["used", "total"],
    "properties": {"used": _num, "total": _num},
}
_percentiles = {
    "type": ["object", "null"],
    "properties": {"p50": {"type": ["number", "null"]}, "p95": {"type": ["number", "null"]}},
}
STATUS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "aana status --json",
    "type": "object",
    "required": ["schema", "healthy", "cluster", "apps"],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "healthy": {
            "type": "boolean",
            "description": "every app RUNNING and every deployment HEALTHY (or UPSCALING / DOWNSCALING: serving while "
            "the autoscaler changes its replicas)",
        },
        "cluster": {
            "type": "object",
            "required": ["address", "nodes", "resources"],
            "properties": {
                "address": {"type": "string"},
                "nodes": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["node_id", "ip", "alive"],
                        "properties": {
                            "node_id": {"type": "string"},
                            "ip": {"type": "string"},
                            "alive": {"type": "boolean"},
                        },
                    },
                },
                "resources": {
                    "type": "object",
                    "description": "CPU and GPU in units, memory in bytes",
                    "additionalProperties": _used_total,
                },
            },
        },
        "apps": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "status", "message", "endpoint", "models", "deploying_for_s", "deployments"],
                "properties": {
                    "name": {"type": "string"},
                    "status": {"type": "string"},
                    "message": {"type": "string"},
                    "endpoint": _str_or_null,
                    "models": {"type": "array", "items": {"type": "string"}},
                    "deploying_for_s": {"type": ["number", "null"]},
                    "deployments": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": [
                                "name",
                                "role",
                                "status",
                                "replicas",
                                "placement",
                                "target_replicas",
                                "autoscaling",
                                "message",
                            ],
                            "properties": {
                                "name": {"type": "string"},
                                "role": {"enum": ["model", "ingress"]},
                                "status": {"type": "string"},
                                "replicas": {
                                    "type": "object",
                                    "description": "live replicas by state (RUNNING, STARTING, STOPPING, ...)",
                                    "additionalProperties": {"type": "integer"},
                                },
                                "placement": {
                                    "type": "array",
                                    "description": "each live replica's node (node_id as in cluster.nodes) and state",
                                    "items": {
                                        "type": "object",
                                        "required": ["node_id", "node_ip", "state"],
                                        "properties": {
                                            "node_id": {"type": "string"},
                                            "node_ip": {"type": "string"},
                                            "state": {"type": "string"},
                                        },
                                    },
                                },
                                "target_replicas": {
                                    "type": ["integer", "null"],
                                    "description": "the replicas Ray Serve is working towards (the autoscaler "
                                    "moves it); null when Serve does not say",
                                },
                                "autoscaling": {
                                    "type": ["object", "null"],
                                    "description": "the bounds of an autoscaled deployment; null: fixed replicas",
                                    "required": ["min_replicas", "max_replicas"],
                                    "properties": {
                                        "min_replicas": {"type": "integer"},
                                        "max_replicas": {"type": "integer"},
                                        "target_ongoing_requests": {"type": ["number", "null"]},
                                    },
                                },
                                "message": {"type": "string"},
                            },
                        },
                    },
                    "requests": {
                        "type": ["object", "null"],
                        "description": "per model, from the database (null when it cannot be read)",
                        "additionalProperties": {
                            "type": "object",
                            "required": ["count", "errors"],
                            "properties": {
                                "count": {"type": "integer"},
                                "errors": {"type": "integer"},
                                "ttft_ms": _percentiles,
                                "latency_ms": _percentiles,
                            },
                        },
                    },
                },
            },
        },
    },
}


def snapshot_from(
    address: str,
    nodes: list[dict[str, Any]],
    total: dict[str, float],
    available: dict[str, float],
    serve_details: dict[str, Any],
    now: float,
) -> dict[str, Any]:
    http = serve_details.get("http_options") or {}
    apps = [_app(app, http, now) for app in (serve_details.get("applications") or {}).values()]
    healthy = bool(apps) and all(
        a["status"] == "RUNNING" and all(d["status"] in SERVING for d in a["deployments"]) for a in apps
    )
    return {
        "schema": SCHEMA_ID,
        "healthy": healthy,
        "cluster": {
            "address": address,
            "nodes": [
                {"node_id": n.get("NodeID", ""), "ip": n.get("NodeManagerAddress", ""), "alive": bool(n.get("Alive"))}
                for n in nodes
            ],
            "resources": {
                name: {"used": max(0.0, total.get(key, 0.0) - available.get(key, 0.0)), "total": total.get(key, 0.0)}
                for name, key in (("CPU", "CPU"), ("GPU", "GPU"), ("memory", "memory"))
            },
        },
        "apps": apps,
    }


def _app(app: dict[str, Any], http: dict[str, Any], now: float) -> dict[str, Any]:
    deployments = [
        {
            "name": d["name"],
            "role": "ingress" if d["name"] == INGRESS_NAME else "model",
            "status": _name(d.get("status", "")),
            "replicas": _replica_counts(d.get("replicas") or []),
            "placement": [
                {
                    "node_id": r.get("node_id") or "",
                    "node_ip": r.get("node_ip") or "",
                    "state": _name(r.get("state", "")),
                }
                for r in d.get("replicas") or []
            ],
            "target_replicas": d.get("target_num_replicas"),
            "autoscaling": _autoscaling(d.get("deployment_config") or {}),
            "message": d.get("message") or "",
        }
        for d in (app.get("deployments") or {}).values()
    ]
    status = _name(app.get("status", ""))
    deployed_at = app.get("last_deployed_time_s")
    deploying = status in ("DEPLOYING", "NOT_STARTED") and deployed_at
    return {
        "name": app.get("name", ""),
        "status": status,
        "message": app.get("message") or "",
        "endpoint": _endpoint(http, app.get("route_prefix")),
        "models": [d["name"] for d in deployments if d["role"] == "model"],
        "deploying_for_s": round(now - deployed_at, 1) if deploying else None,
        "deployments": deployments,
        "requests": None,
    }


def _name(value: Any) -> str:
    """Ray hands back enums or their string values depending on the call; the schema wants the plain name."""
    return str(getattr(value, "value", value))


def _replica_counts(replicas: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for replica in replicas:
        state = _name(replica.get("state", "UNKNOWN"))
        counts[state] = counts.get(state, 0) + 1
    return counts


def _autoscaling(config: dict[str, Any]) -> dict[str, Any] | None:
    bounds = config.get("autoscaling_config")
    if not bounds:
        return None
    return {
        "min_replicas": bounds.get("min_replicas", 1),  # Serve's defaults, should a config leave them out
        "max_replicas": bounds.get("max_replicas", 1),
        "target_ongoing_requests": bounds.get("target_ongoing_requests"),
    }


def _endpoint(http: dict[str, Any], route_prefix: str | None) -> str | None:
    if not http.get("port") or route_prefix is None:
        return None
    return f"{base_url(http.get('host') or '127.0.0.1', http['port'])}{route_prefix.rstrip('/')}/v1"


def exit_code(snapshot: dict[str, Any]) -> int:
    if not snapshot["apps"]:
        return EXIT_NOTHING
    return EXIT_HEALTHY if snapshot["healthy"] else EXIT_UNHEALTHY
