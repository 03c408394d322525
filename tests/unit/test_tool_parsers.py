"""Tool-call parsers on outputs as the models write them: one-shot results, and streaming in any pieces."""

import json
import random
from typing import get_args

import pytest

from runtime.openai.tool_parsers import PARSERS, ParsedCall, UnknownToolParser, make_parser, parse
from runtime.spec import ToolParserName

MARKERS = ("<tool_call>", "</tool_call>", "<|python_tag|>", "[TOOL_CALLS]", "[ARGS]")

# Qwen2.5-7B-Instruct and Hermes-3-Llama-3.1-8B (Hermes writes "arguments" before "name").
QWEN_ONE = (
    '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "Paris, France", "unit": "celsius"}}\n'
    "</tool_call>"
)
QWEN_AROUND = (
    "I'll look up the current weather in Paris for you.\n"
    '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "Paris, France"}}\n</tool_call>\n'
    "Once I have the result I'll let you know whether to bring an umbrella."
)
QWEN_TWO = (
    '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "Paris, France"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "Tōkyō, Japan"}}\n</tool_call>'
)
HERMES_STRING_ARGS = (
    '<tool_call>\n{"arguments": "{\\"symbol\\": \\"TSLA\\"}", "name": "get_stock_fundamentals"}\n</tool_call>'
)
HERMES_BAD_JSON = '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "Paris"}\n</tool_call>'
HERMES_NO_NAME = '<tool_call>\n{"function": "get_current_weather"}\n</tool_call>'
HERMES_UNCLOSED = '<tool_call>\n{"name": "get_current_time", "arguments": {}}\n'
HERMES_CUT_SHORT = '<tool_call>\n{"name": "get_current_weather", "arguments": {"loca'
MENTION = "Use the <tool_call> tag like this:\n"  # a marker in prose, not opening a block
PLAIN = "The capital of France is Paris.\n\nIn maths, a < b means a is smaller; see [1] and {braces}.\n"

# Llama-3.1-8B-Instruct (JSON tool calling; <|python_tag|> survives when special tokens are kept).
LLAMA_ONE = '{"name": "get_current_weather", "parameters": {"location": "San Francisco, CA", "unit": "fahrenheit"}}'
LLAMA_TAGGED = '<|python_tag|>{"name": "get_current_weather", "parameters": {"location": "Paris, France"}}'
LLAMA_TWO = (
    '{"name": "get_current_weather", "parameters": {"location": "Paris"}}; '
    '{"name": "get_current_time", "parameters": {"timezone": "Europe/Paris"}}'
)
LLAMA_AFTER = (
    '{"name": "get_current_weather", "parameters": {"location": "Paris"}}\n\n'
    "This will fetch the current weather in Paris."
)
LLAMA_BEFORE = 'Sure! Here is the call: {"name": "get_current_weather", "parameters": {"location": "Paris"}}'
LLAMA_STRING_ARGS = '{"name": "get_current_weather", "arguments": "{\\"location\\": \\"Paris\\"}"}'
LLAMA_BAD_JSON = '{"name": "get_current_weather", "parameters": {"location": "Paris"'
LLAMA_NO_NAME = '{"location": "Paris", "temperature": 18}'

# Mistral-7B-Instruct-v0.3 (a JSON array) and Mistral-Small-3.1 (v11 tokenizer: name[ARGS]{...}).
MISTRAL_ONE = (
    '[TOOL_CALLS] [{"name": "get_current_weather", "arguments": {"location": "Paris, France", "format": "celsius"}}]'
)
MISTRAL_TWO = (
    '[TOOL_CALLS] [{"name": "get_current_weather", "arguments": {"location": "Paris"}}, '
    '{"name": "get_current_time", "arguments": {"timezone": "Europe/Paris"}}]'
)
MISTRAL_V11_ONE = '[TOOL_CALLS]get_current_weather[ARGS]{"location": "Paris, France", "format": "celsius"}'
MISTRAL_V11_TWO = (
    '[TOOL_CALLS]get_current_weather[ARGS]{"location": "Paris"}[TOOL_CALLS]get_current_time[ARGS]{"timezone": "UTC"}'
)
MISTRAL_AROUND = (
    'Let me check that for you. [TOOL_CALLS]get_current_weather[ARGS]{"location": "Paris"} I\'ll report back.'
)
MISTRAL_STRING_ARGS = '[TOOL_CALLS] [{"name": "get_current_weather", "arguments": "{\\"location\\": \\"Paris\\"}"}]'
MISTRAL_BAD_JSON = '[TOOL_CALLS] [{"name": "get_current_weather", "arguments": {"location": "Paris"}]'
MISTRAL_V11_CUT_SHORT = '[TOOL_CALLS]get_current_weather[ARGS]{"location": "Par'
MISTRAL_BAD_NAMED = "[TOOL_CALLS]get current weather in Paris"


def weather(location: str, **more: str) -> ParsedCall:
    return ParsedCall("get_current_weather", json.dumps({"location": location, **more}, ensure_ascii=False))


# (parser, output, content, calls): what one parse of each output gives.
CALLS = [
    ("hermes", QWEN_ONE, "", [weather("Paris, France", unit="celsius")]),
    (
        "hermes",
        QWEN_AROUND,
        "I'll look up the current weather in Paris for you.\n"
        "Once I have the result I'll let you know whether to bring an umbrella.",
        [weather("Paris, France")],
    ),
    ("hermes", QWEN_TWO, "", [weather("Paris, France"), weather("Tōkyō, Japan")]),
    ("hermes", HERMES_STRING_ARGS, "", [ParsedCall("get_stock_fundamentals", '{"symbol": "TSLA"}')]),
    ("hermes", HERMES_UNCLOSED, "", [ParsedCall("get_current_time", "{}")]),
    ("hermes", MENTION + QWEN_ONE + "\n\n", MENTION.rstrip(), [weather("Paris, France", unit="celsius")]),
    ("llama3_json", LLAMA_ONE, "", [weather("San Francisco, CA", unit="fahrenheit")]),
    ("llama3_json", LLAMA_TAGGED, "", [weather("Paris, France")]),
    (
        "llama3_json",
        LLAMA_TWO,
        "",
        [weather("Paris"), ParsedCall("get_current_time", '{"timezone": "Europe/Paris"}')],
    ),
    ("llama3_json", LLAMA_AFTER, "This will fetch the current weather in Paris.", [weather("Paris")]),
    ("llama3_json", LLAMA_STRING_ARGS, "", [weather("Paris")]),
    ("mistral", MISTRAL_ONE, "", [weather("Paris, France", format="celsius")]),
    (
        "mistral",
        MISTRAL_TWO,
        "",
        [weather("Paris"), ParsedCall("get_current_time", '{"timezone": "Europe/Paris"}')],
    ),
    ("mistral", MISTRAL_V11_ONE, "", [weather("Paris, France", format="celsius")]),
    ("mistral", MISTRAL_V11_TWO, "", [weather("Paris"), ParsedCall("get_current_time", '{"timezone": "UTC"}')]),
    ("mistral", MISTRAL_AROUND, "Let me check that for you. I'll report back.", [weather("Paris")]),
    ("mistral", MISTRAL_STRING_ARGS, "", [weather("Paris")]),
]


@pytest.mark.parametrize(("parser", "output", "content", "calls"), CALLS)
def test_calls_are_read_and_the_rest_is_content(parser, output, content, calls):
    assert parse(parser, output) == (content, calls)


# (parser, output): outputs whose would-be calls do not parse, so all of it is content.
NOT_CALLS = [
    ("hermes", HERMES_BAD_JSON),
    ("hermes", HERMES_NO_NAME),
    ("hermes", HERMES_CUT_SHORT),
    ("hermes", "Use the <tool_call> tag, then " + HERMES_CUT_SHORT),
    ("llama3_json", LLAMA_BEFORE),
    ("llama3_json", LLAMA_BAD_JSON),
    ("llama3_json", LLAMA_NO_NAME),
    ("llama3_json", "\n<|python_tag|>" + LLAMA_NO_NAME),
    ("llama3_json", '<|python_tag|>brave_search.call(query="weather Paris")'),
    ("mistral", MISTRAL_BAD_JSON),
    ("mistral", MISTRAL_BAD_NAMED),
    ("mistral", MISTRAL_V11_CUT_SHORT),
    ("mistral", "[TOOL_CALLS]"),
]


@pytest.mark.parametrize(("parser", "output"), NOT_CALLS)
def test_a_call_that_does_not_parse_is_content_in_its_original_text(parser, output):
    assert parse(parser, output) == (output, [])


@pytest.mark.parametrize("parser", sorted(PARSERS))
@pytest.mark.parametrize("output", [PLAIN, "", "   \n", "<", "[", "{", "<tool_call", "[TOOL_CALLS"])
def test_output_without_a_call_is_all_content_unchanged(parser, output):
    assert parse(parser, output) == (output, [])


def test_a_block_that_is_not_a_call_stays_content_and_later_blocks_still_count():
    output = HERMES_NO_NAME + "\n" + QWEN_ONE
    assert parse("hermes", output) == (HERMES_NO_NAME, [weather("Paris, France", unit="celsius")])


def test_llama_calls_after_a_good_one_that_fail_are_content_from_there_on():
    output = "<|python_tag|>" + LLAMA_ONE + "; " + LLAMA_BAD_JSON
    assert parse("llama3_json", output) == (LLAMA_BAD_JSON, [weather("San Francisco, CA", unit="fahrenheit")])


def test_mistral_keeps_its_special_tokens_and_the_others_need_not():
    assert make_parser("mistral").skip_special_tokens is False
    assert make_parser("hermes").skip_special_tokens is True
    assert make_parser("llama3_json").skip_special_tokens is True


STREAMED = [
    *[(parser, output) for parser, output, _, _ in CALLS],
    *NOT_CALLS,
    ("llama3_json", "  \n" + LLAMA_TWO + ";\n"),
    ("llama3_json", LLAMA_ONE + "; " + LLAMA_BAD_JSON),
    ("hermes", HERMES_NO_NAME + "\n" + QWEN_ONE),
    *[(parser, PLAIN) for parser in sorted(PARSERS)],
]


def stream(parser: str, pieces: list[str]) -> tuple[list[str], list[ParsedCall]]:
    tool_parser = make_parser(parser)
    contents, calls = [], []
    for piece in [*pieces, None]:
        content, done = tool_parser.finish() if piece is None else tool_parser.feed(piece)
        contents.append(content)
        calls.extend(done)
    return contents, calls


def chunkings(output: str) -> list[list[str]]:
    """One character at a time, then random pieces (fixed seed) of 1 to 12 characters."""
    rng = random.Random(output)
    ways = [list(output)]
    for _ in range(30):
        pieces, at = [], 0
        while at < len(output):
            size = rng.randint(1, 12)
            pieces.append(output[at : at + size])
            at += size
        ways.append(pieces)
    return ways


@pytest.mark.parametrize(("parser", "output"), STREAMED)
def test_streaming_in_any_pieces_gives_the_one_shot_result(parser, output):
    whole_content, whole_calls = parse(parser, output)
    not_content = [marker for marker in MARKERS if marker not in whole_content]
    for pieces in chunkings(output):
        contents, calls = stream(parser, pieces)
        assert ("".join(contents), calls) == (whole_content, whole_calls), pieces
        assert not any(marker in content for content in contents for marker in not_content), pieces


def test_a_marker_split_across_pieces_is_held_back_and_never_streamed():
    parser = make_parser("hermes")
    assert parser.feed("Checking now.\n<tool") == ("Checking now.", [])
    assert parser.feed('_call>\n{"name": "get_current_weather", ') == ("", [])
    assert parser.feed('"arguments": {"location": "Paris"}}\n</tool_') == ("", [])
    assert parser.feed("call>") == ("", [weather("Paris")])
    assert parser.finish() == ("", [])


@pytest.mark.parametrize(
    ("parser", "piece", "held_back", "next_piece", "released"),
    [
        ("hermes", "so a <", "so a", " b", " < b"),
        ("mistral", "see [", "see", "1]", " [1]"),
        ("llama3_json", "<", "", "b>bold</b>", "<b>bold</b>"),
    ],
)
def test_text_that_only_looked_like_a_marker_goes_out_once_ruled_out(parser, piece, held_back, next_piece, released):
    tool_parser = make_parser(parser)
    assert tool_parser.feed(piece) == (held_back, [])
    assert tool_parser.feed(next_piece) == (released, [])
    assert tool_parser.finish() == ("", [])


@pytest.mark.parametrize(
    ("parser", "output"), [("hermes", HERMES_BAD_JSON), ("llama3_json", LLAMA_NO_NAME), ("mistral", MISTRAL_BAD_NAMED)]
)
def test_a_would_be_call_ruled_out_goes_out_without_waiting_for_the_end(parser, output):
    assert make_parser(parser).feed(output) == (output, [])


def test_a_marker_prefix_at_the_very_end_comes_out_at_finish():
    parser = make_parser("hermes")
    assert parser.feed("a <tool_") == ("a", [])
    assert parser.finish() == (" <tool_", [])


@pytest.mark.parametrize(
    ("parser", "output", "first_call_after"),
    [
        ("llama3_json", LLAMA_TWO, LLAMA_TWO.index(";")),
        ("mistral", MISTRAL_V11_TWO, MISTRAL_V11_TWO.index("[TOOL_CALLS]", 1)),
        ("hermes", QWEN_TWO, QWEN_TWO.index("\n<tool_call>")),
    ],
)
def test_each_call_goes_out_as_soon_as_it_is_complete(parser, output, first_call_after):
    tool_parser = make_parser(parser)
    assert tool_parser.feed(output[: first_call_after - 1]) == ("", [])
    _, calls = tool_parser.feed(output[first_call_after - 1 : first_call_after])
    assert [call.name for call in calls] == ["get_current_weather"]
    _, rest = tool_parser.feed(output[first_call_after:])
    assert len(rest) == 1


def test_an_unknown_parser_name_lists_the_known_ones():
    with pytest.raises(UnknownToolParser, match="hermes, llama3_json, mistral"):
        make_parser("qwen3_xml")


def test_the_spec_accepts_exactly_the_parsers_there_are():
    assert set(get_args(ToolParserName)) == set(PARSERS)


@pytest.mark.parametrize("given", ["", ', "arguments": ""', ', "arguments": null'])
def test_a_call_without_arguments_has_an_empty_object(given):
    output = f'<tool_call>\n{{"name": "get_current_time"{given}}}\n</tool_call>'
    assert parse("hermes", output) == ("", [ParsedCall("get_current_time", "{}")])
