"""OpenAI request -> GenerationRequest: defaults, precedence, flattening."""

import pytest

from runtime.engines.registry import ENGINES
from runtime.openai.convert import to_generation_request
from runtime.openai.errors import APIError
from runtime.openai.protocol import ChatCompletionRequest

SUPPORTS = ENGINES["transformers"].supports


def _convert(defaults=None, **body):
    body.setdefault("model", "m")
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    request = ChatCompletionRequest.model_validate(body)
    return to_generation_request(request, "id-1", defaults or {}, SUPPORTS, "transformers")


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


def test_unsupported_sampling_field_names_the_engine():
    with pytest.raises(APIError) as caught:
        _convert(presence_penalty=0.5)
    assert caught.value.param == "presence_penalty" and "transformers" in caught.value.message
