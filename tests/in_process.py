"""The OpenAI app in-process over started replicas (no Ray): what the HTTP tests of tests/unit and tests/store serve.

`start_servers` starts one `ModelServer` per deployment of a plan; `serve` also builds the app and the official
openai client on it. Tests that need the app's other arguments (a key, an authenticator, quotas) call `create_app`
with `start_servers`' replicas themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import openai
from fastapi.testclient import TestClient

from runtime.engines.base import Engine
from runtime.model_server import ModelServer
from runtime.openai.ingress import create_app
from runtime.plan import AppPlan, DeploymentPlan, build_plan
from runtime.spec import parse_spec

EngineFor = Callable[[DeploymentPlan], "type[Engine] | None"]  # None: the registry's engine for the deployment


def start_servers(plan: AppPlan, engine_for: EngineFor = lambda deployment: None) -> dict[str, ModelServer]:
    """One started replica per deployment, by model id."""
    servers = {d.model_id: ModelServer(d, engine_for(d)) for d in plan.deployments}
    for server in servers.values():
        asyncio.run(server.start())
    return servers


@dataclass
class InProcess:
    plan: AppPlan
    servers: dict[str, ModelServer]
    http: TestClient
    client: openai.OpenAI

    @property
    def engines(self) -> dict[str, Any]:
        return {name: server.engine for name, server in self.servers.items()}


def serve(spec: str, engine_for: EngineFor = lambda deployment: None) -> InProcess:
    """The app of `spec` (TOML text), with an openai client that calls it in-process and never retries."""
    plan = build_plan(parse_spec(spec))
    servers = start_servers(plan, engine_for)
    http = TestClient(create_app(servers, plan.cards))
    client = openai.OpenAI(api_key="x", base_url="http://testserver/v1", http_client=http, max_retries=0)
    return InProcess(plan, servers, http, client)
