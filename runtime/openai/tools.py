"""Tools and tool_choice: what a request's tools ask of the model, and how a choice's text becomes tool calls.

- `plan_tools` reads `tools`, `tool_choice` and `parallel_tool_calls` into a `ToolUse`: `none` (the tools are shown,
  the text is content), `auto` (the model decides; the deployment's `tool_parser` reads its own tool-call format
  out of the text), `required` and a named function (constrained decoding: the text is a JSON array of
  {"name", "arguments"} objects, or the named function's arguments object, so even a small model calls reliably).
- `ToolReader` turns one choice's streamed text into content pieces and tool calls (`CallStart` with the id and
  name, then `CallArguments` fragments), the order in which OpenAI streams them.

Pure: no HTTP framing (runtime.openai.streaming writes the chunks) and no engine code.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from runtime.engines.base import StructuredOutput
from runtime.model_api import ModelCard
from runtime.openai.errors import APIError
from runtime.openai.protocol import ChatCompletionRequest, NamedToolChoice
from runtime.openai.schemas import check_schema
from runtime.openai.tool_parsers import make_parser

ToolMode = Literal["none", "auto", "required", "named"]
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class ToolUse:
    mode: ToolMode
    tools: tuple[dict[str, Any], ...]  # {"type": "function", "function": {...}}, as the chat template reads them
    function: str | None = None  # the named function
    parser: str | None = None  # auto: the deployment's tool_parser
    constraint: StructuredOutput | None = None  # required / named: what the text must be

    def reader(self) -> ToolReader | None:
        """A reader for one choice's text; None when the text is plain content."""
        return None if self.mode == "none" else ToolReader(self)


def plan_tools(request: ChatCompletionRequest, card: ModelCard) -> ToolUse | None:
    """The request's tool use, or None without tools. A tool_choice that cannot be served is a 400 naming it."""
    choice = request.tool_choice
    if not request.tools:
        if choice not in (None, "none"):
            raise APIError(400, "tool_choice needs `tools`; send the tools or leave tool_choice out", "tool_choice")
        return None
    tools = tuple(tool.model_dump(exclude_none=True) for tool in request.tools)
    names = [tool.function.name for tool in request.tools]
    if len(set(names)) < len(names):
        raise APIError(400, "two tools share a function name; give each function its own name", param="tools")
    parallel = request.parallel_tool_calls is not False
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in names:
            raise APIError(
                400, f"tool_choice names function {choice.function.name!r}, which is not among the tools "
                f"({', '.join(names)})", param="tool_choice",
            )  # fmt: skip
        tool = request.tools[names.index(choice.function.name)]
        schema = _parameters(tool.function.parameters, f"tools[{names.index(tool.function.name)}]")
        return ToolUse("named", tools, choice.function.name, constraint=StructuredOutput(json.dumps(schema)))
    if choice == "required":
        return ToolUse("required", tools, constraint=StructuredOutput(json.dumps(_calls_schema(request, parallel))))
    if choice == "none":
        return ToolUse("none", tools)
    if card.tool_parser is None:
        raise APIError(
            400,
            f'tool_choice "auto" needs a tool-call parser for model {card.id}: set tool_parser (hermes, llama3_json '
            'or mistral) on its deployment in the spec, or send tool_choice "required" or a named function',
            param="tool_choice",
        )
    return ToolUse("auto", tools, parser=card.tool_parser)


def _parameters(parameters: dict[str, Any] | None, where: str) -> dict[str, Any]:
    schema = parameters if parameters is not None else _ANY_OBJECT
    check_schema(schema, f"{where}.function.parameters")
    return schema


def _calls_schema(request: ChatCompletionRequest, parallel: bool) -> dict[str, Any]:
    """One or more {"name", "arguments"} objects, each a tool's name and arguments (as vLLM builds it for
    `required`). Each tool's $defs move to the top, where its local references ("#/$defs/...") point."""
    options, defs = [], {}
    for i, tool in enumerate(request.tools or ()):
        parameters = dict(_parameters(tool.function.parameters, f"tools[{i}]"))
        for name, definition in parameters.pop("$defs", {}).items():
            if defs.setdefault(name, definition) != definition:
                raise APIError(400, f"two tools define $defs/{name} differently; rename one", param="tools")
        options.append({
            "type": "object",
            "properties": {"name": {"const": tool.function.name}, "arguments": parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        })  # fmt: skip
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": options}}
    if not parallel:
        schema["maxItems"] = 1
    if defs:
        schema["$defs"] = defs
    return schema


# -- reading the output -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Content:
    text: str


@dataclass(frozen=True)
class CallStart:
    index: int  # the call's place among this choice's calls
    id: str
    name: str


@dataclass(frozen=True)
class CallArguments:
    index: int
    text: str  # the next fragment of the arguments' JSON


ToolEvent = Content | CallStart | CallArguments


@dataclass
class ToolCallOut:
    id: str
    name: str
    arguments: str


@dataclass
class ToolReader:
    """One choice's text -> content and tool calls, incrementally. `content` and `calls` hold everything so far."""

    use: ToolUse
    content: str = ""
    calls: list[ToolCallOut] = field(default_factory=list)
    _held: list[str] = field(default_factory=list)  # required: the JSON array, parsed when it is complete

    def __post_init__(self) -> None:
        self._parser = make_parser(self.use.parser) if self.use.mode == "auto" else None

    def feed(self, text: str) -> list[ToolEvent]:
        if not text:
            return []
        mode = self.use.mode
        if mode == "named":
            events: list[ToolEvent] = [] if self.calls else [self._start(self.use.function or "")]
            self.calls[0].arguments += text
            return [*events, CallArguments(0, text)]
        if mode == "required":
            self._held.append(text)
            return []
        content, calls = self._parser.feed(text)
        return self._events(content, calls)

    def finish(self) -> list[ToolEvent]:
        """The end of the choice's text: what was held back."""
        mode = self.use.mode
        if mode == "named":
            if self.calls:
                return []
            start = self._start(self.use.function or "")  # no text at all: a call without arguments
            self.calls[0].arguments = "{}"
            return [start, CallArguments(0, "{}")]
        if mode == "required":
            return self._required_calls("".join(self._held))
        content, calls = self._parser.finish()
        return self._events(content, calls)

    def _required_calls(self, text: str) -> list[ToolEvent]:
        try:
            items = json.loads(text)
        except ValueError:
            items = None  # cut short (max_tokens): the text goes out as content
        if not isinstance(items, list) or not all(isinstance(i, dict) and "name" in i for i in items):
            return self._events(text, [])
        events: list[ToolEvent] = []
        for item in items:
            events.append(self._start(str(item["name"])))
            arguments = json.dumps(item.get("arguments", {}), ensure_ascii=False)
            self.calls[-1].arguments = arguments
            events.append(CallArguments(len(self.calls) - 1, arguments))
        return events

    def _events(self, content: str, calls: list[Any]) -> list[ToolEvent]:
        events: list[ToolEvent] = []
        if content:
            self.content += content
            events.append(Content(content))
        for call in calls:
            events.append(self._start(call.name))
            self.calls[-1].arguments = call.arguments
            events.append(CallArguments(len(self.calls) - 1, call.arguments))
        return events

    def _start(self, name: str) -> CallStart:
        call = ToolCallOut(f"call_{uuid.uuid4().hex[:24]}", name, "")
        self.calls.append(call)
        return CallStart(len(self.calls) - 1, call.id, name)
