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
    assert asyncio.run(server.health()) == ModelHealth(load={"running": 0, "queued": 0})
    server.engine.unhealthy = "engine core died"
    health = asyncio.run(server.health())
    assert (health.ready, health.problem) == (False, "engine core died")


def test_shutdown_releases_the_engine_once():
    server = _started()
    asyncio.run(server.shutdown())
    asyncio.run(server.shutdown())
    assert server.engine.shutdowns == 1


def test_at_most_max_ongoing_requests_generate_and_the_rest_wait_their_turn():
    plan = build_plan(
        parse_spec('name = "t"\n[deployments.m]\nengine = "echo"\nmax_ongoing_requests = 1\ntoken_delay_s = 0.05\n')
    ).deployments[0]
    server = ModelServer(plan)

    async def run():
        await server.start()
        requests = [GenerationRequest(f"r{i}", ({"role": "user", "content": "a b c"},)) for i in range(3)]

        async def one(request):
            return [item async for item in server.generate(request)]

        tasks = [asyncio.create_task(one(r)) for r in requests]
        await asyncio.sleep(0.07)  # the first is generating; the other two wait for its slot
        seen = (server.engine.running, server.queued, (await server.health()).load)
        results = await asyncio.gather(*tasks)
        return seen, results

    (running, queued, load), results = asyncio.run(run())
    assert (running, queued, load) == (1, 2, {"running": 1, "queued": 2})
    assert all(items[-1].finish_reason == "stop" for items in results)
    assert server.queued == 0 and server.engine.running == 0
