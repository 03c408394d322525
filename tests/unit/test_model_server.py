"""runtime.model_server.ModelServer, the one replica class, run in-process over the scripted echo engine."""

from __future__ import annotations

import asyncio

import pytest

from runtime.engines.base import Delta, EngineError, GenerationRequest, StreamError, TokenLogprob
from runtime.engines.echo import EchoEngine
from runtime.model_api import ModelHealth
from runtime.model_server import ModelServer, coalesce, merge
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


def test_coalescing_sends_the_first_token_before_the_second_is_generated_and_holds_nothing_back_at_the_end():
    async def run():
        go_on, finished, produced = asyncio.Event(), asyncio.Event(), []

        async def engine():
            produced.append("a")
            yield Delta("a", 3, 1)
            await go_on.wait()  # the second token exists only once the test has seen the first
            for count, word in enumerate((" b", " c", " d"), start=2):
                produced.append(word)
                yield Delta(word, 3, count)
            yield Delta("", 3, 4, "stop")
            finished.set()

        stream = coalesce(engine())
        first = await stream.__anext__()
        seen_before_second = list(produced)
        go_on.set()
        await finished.wait()  # a consumer that lags: the engine has finished before it reads on
        return first, seen_before_second, [item async for item in stream]

    first, seen_before_second, rest = asyncio.run(run())
    assert (first, seen_before_second) == (Delta("a", 3, 1), ["a"])
    assert rest == [Delta(" b c d", 3, 4, "stop")]  # what piled up, merged; nothing held back once it ended


def test_coalescing_merges_per_choice_and_keeps_logprobs_and_an_error_in_order():
    lp = [TokenLogprob(t, -1.0, None) for t in ("x", "y", "z")]
    batch = [
        Delta("x", 2, 1, index=0, logprobs=(lp[0],)),
        Delta("y", 2, 1, index=1, logprobs=(lp[1],)),
        Delta("z", 2, 2, "length", index=0, logprobs=(lp[2],)),
    ]
    assert merge(batch) == [Delta("xz", 2, 2, "length", 0, (lp[0], lp[2])), Delta("y", 2, 1, None, 1, (lp[1],))]

    async def run():
        async def engine():
            yield Delta("a", 1, 1)
            yield Delta(" b", 1, 2)
            raise EngineError("invalid_request", "bad")

        stream, items = coalesce(engine()), []
        with pytest.raises(EngineError):
            async for item in stream:
                items.append(item)
        return items

    assert "".join(d.text for d in asyncio.run(run())) == "a b"  # what came before the error is delivered first


def test_closing_a_coalesced_stream_stops_the_engine_before_close_returns():
    async def run():
        closed = []

        async def engine():
            try:
                yield Delta("a", 1, 1)
                await asyncio.Event().wait()  # would generate forever
            finally:
                closed.append(True)

        stream = coalesce(engine())
        await stream.__anext__()
        await stream.aclose()
        return closed

    assert asyncio.run(run()) == [True]
