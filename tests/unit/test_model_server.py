"""runtime.model_server.ModelServer, the one replica class, run in-process over the scripted echo engine."""

from __future__ import annotations

import asyncio

from runtime.engines.base import Delta, EngineError, GenerationRequest, StreamError
from runtime.engines.echo import EchoEngine
from runtime.model_api import ModelHealth
from runtime.model_server import ModelServer
from runtime.plan import build_plan
from runtime.spec import parse_spec

PLAN = build_plan(parse_spec('name = "t"\n[deployments.m]\nengine = "echo"\n')).deployments[0]


def _started() -> ModelServer:
    server = ModelServer(PLAN)
    asyncio.run(server.start())
    return server


def _items(server: ModelServer, content: str = "a b") -> list:
    async def run():
        request = GenerationRequest("r", ({"role": "user", "content": content},))
        return [item async for item in server.generate(request)]

    return asyncio.run(run())


def test_the_registry_picks_the_engine_and_a_test_may_inject_one():
    assert type(ModelServer(PLAN).engine) is EchoEngine

    class Other(EchoEngine):
        pass

    assert type(ModelServer(PLAN, engine_class=Other).engine) is Other


def test_deltas_pass_through_unchanged():
    assert _items(_started()) == [Delta("a", 4, 1), Delta(" b", 4, 2), Delta("", 4, 2, "stop")]


def test_a_client_error_becomes_an_in_band_stream_error():
    server = _started()
    server.engine.enqueue(["x", EngineError("invalid_request", "bad stop", "stop")])
    assert _items(server) == [Delta("x", 4, 1), StreamError("invalid_request", "bad stop", "stop")]


def test_an_engine_bug_becomes_an_internal_error_without_its_text(caplog):
    server = _started()
    server.engine.enqueue([ZeroDivisionError("secret detail")])
    [error] = _items(server)
    assert error == StreamError("internal", "model m failed (ZeroDivisionError); see the server log")
    assert "generation failed for m" in caplog.text  # the operator gets the traceback


def test_health_is_ready_with_load_or_the_reason():
    server = _started()
    assert asyncio.run(server.health()) == ModelHealth(load={"running": 0})
    server.engine.unhealthy = "engine core died"
    health = asyncio.run(server.health())
    assert (health.ready, health.problem) == (False, "engine core died")


def test_shutdown_releases_the_engine_once():
    server = _started()
    asyncio.run(server.shutdown())
    asyncio.run(server.shutdown())
    assert server.engine.shutdowns == 1
