"""OpenAI request -> GenerationRequest: defaults, precedence, flattening, choices and logprobs, rejections."""

import pytest
from pydantic import ValidationError

from runtime.engines.registry import ENGINES
from runtime.model_api import ModelCard, RequestLimits
from runtime.openai.convert import to_generation_request
from runtime.openai.errors import APIError
from runtime.openai.protocol import ChatCompletionRequest

SUPPORTS = ENGINES["transformers"].supports


def _convert(defaults=None, **body):
    body.setdefault("model", "m")
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    request = ChatCompletionRequest.model_validate(body)
    card = ModelCard("m", "transformers", None, SUPPORTS, defaults or {})
    return to_generation_request(request, "id-1", card)


def test_openai_default_temperature_when_nobody_sets_one():
    assert _convert().params.temperature == 1.0


def test_spec_defaults_fill_what_the_request_leaves_out():
    params = _convert({"temperature": 0.0, "max_tokens": 7, "stop": ["x"], "seed": 3}).params
    assert (params.temperature, params.max_tokens, params.stop, params.seed) == (0.0, 7, ("x",), 3)


def test_request_values_win_over_spec_defaults():
    generation = _convert({"temperature": 0.0, "max_tokens": 7}, temperature=0.5, max_tokens=9, stop="END")
    assert (generation.params.temperature, generation.params.max_tokens) == (0.5, 9)
    assert generation.params.stop == ("END",)
    assert generation.max_tokens_requested


def test_max_completion_tokens_wins_over_max_tokens():
    assert _convert(max_tokens=5, max_completion_tokens=8).params.max_tokens == 8


def test_spec_max_tokens_is_not_a_request():
    assert not _convert({"max_tokens": 7}).max_tokens_requested


def test_messages_are_flattened_and_developer_is_system():
    generation = _convert(messages=[
        {"role": "developer", "content": "rules"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ])  # fmt: skip
    assert generation.messages == ({"role": "system", "content": "rules"}, {"role": "user", "content": "a\nb"})


@pytest.mark.parametrize(
    "body, param",
    [
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"n": 2}, "n"),
        ({"logit_bias": {"5": 1}}, "logit_bias"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_a_field_the_engine_cannot_honour_is_a_400_naming_the_engine(body, param):
    body.setdefault("model", "m")
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    card = ModelCard("m", "basic", None, frozenset({"temperature", "max_tokens"}), {})
    with pytest.raises(APIError) as caught:
        to_generation_request(ChatCompletionRequest.model_validate(body), "id-1", card)
    assert caught.value.param == param and "basic" in caught.value.message


def _convert_for(engine, **body):
    body.setdefault("model", "m")
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    request = ChatCompletionRequest.model_validate(body)
    return to_generation_request(request, "id-1", ModelCard("m", engine, None, ENGINES[engine].supports, {}))


def test_one_choice_and_no_logprobs_by_default():
    params = _convert_for("vllm").params
    assert (params.n, params.logprobs) == (1, None)


@pytest.mark.parametrize(
    "body, n, logprobs",
    [
        ({"n": 3}, 3, None),
        ({"logprobs": True}, 1, 0),  # the chosen token's logprob only
        ({"logprobs": True, "top_logprobs": 5}, 1, 5),
        ({"logprobs": True, "top_logprobs": 0}, 1, 0),
        ({"logprobs": False}, 1, None),
        ({"logprobs": False, "top_logprobs": 0}, 1, None),  # asks for nothing, as vLLM accepts
        ({"n": 2, "logprobs": True, "top_logprobs": 20}, 2, 20),
    ],
)
def test_n_and_logprobs_map_to_generation_params(body, n, logprobs):
    for engine in ("vllm", "echo"):
        params = _convert_for(engine, **body).params
        assert (params.n, params.logprobs) == (n, logprobs), engine


@pytest.mark.parametrize("body", [{"top_logprobs": 2}, {"logprobs": False, "top_logprobs": 2}])
def test_top_logprobs_without_logprobs_is_a_400_naming_it(body):
    with pytest.raises(APIError) as caught:
        _convert_for("vllm", **body)
    assert (caught.value.status, caught.value.param) == (400, "top_logprobs")
    assert "logprobs" in caught.value.message and "true" in caught.value.message


def test_neutral_n_and_logprobs_are_fine_for_any_engine():
    params = _convert_for("transformers", n=1, logprobs=False, top_logprobs=0).params
    assert (params.n, params.logprobs) == (1, None)


@pytest.mark.parametrize("body, param", [({"n": 0}, "n"), ({"n": 129}, "n"), ({"top_logprobs": 21}, "top_logprobs")])
def test_out_of_range_n_and_top_logprobs_fail_validation(body, param):
    with pytest.raises(ValidationError) as caught:
        _convert_for("vllm", **body)
    assert caught.value.errors()[0]["loc"] == (param,)


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_every_field_an_engine_supports_is_a_request_field(engine):
    # A misspelt name in the registry would silently turn a supported field into a 400.
    assert set(ENGINES[engine].supports) <= set(ChatCompletionRequest.model_fields)


def _card(**limits):
    return ModelCard("m", "echo", None, ENGINES["echo"].supports, {}, RequestLimits(**limits))


def _budget(card, **body):
    body.setdefault("model", "m")
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return to_generation_request(ChatCompletionRequest.model_validate(body), "id-1", card)


def test_a_request_asking_for_more_tokens_than_its_budget_is_a_400_naming_the_fields():
    card = _card(max_tokens_per_request=100)
    assert _budget(card, n=2, max_tokens=50).params.n == 2
    with pytest.raises(APIError) as caught:
        _budget(card, n=3, max_tokens=50)
    assert caught.value.param == "n"
    assert "n (3) x max_tokens (50) = 150 tokens is more than one request may ask of m (100)" in caught.value.message
    with pytest.raises(APIError) as caught:
        _budget(card, max_tokens=101)
    assert caught.value.param == "max_tokens" and "lower max_tokens" in caught.value.message


def test_logprobs_have_a_budget_of_their_own():
    card = _card(max_logprobs_per_request=1000)
    assert _budget(card, max_tokens=100, logprobs=True, top_logprobs=9).params.logprobs == 9
    with pytest.raises(APIError) as caught:
        _budget(card, n=128, max_tokens=100, logprobs=True, top_logprobs=20)
    assert caught.value.param in ("n", "top_logprobs")
    with pytest.raises(APIError) as caught:
        _budget(card, max_tokens=100, logprobs=True, top_logprobs=10)
    assert caught.value.param == "top_logprobs" and "1100 logprob entries" in caught.value.message


def test_without_any_max_tokens_the_context_bounds_the_work():
    assert _budget(_card(max_tokens_per_request=1), n=1).params.max_tokens is None
