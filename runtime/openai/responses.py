"""The Responses API (POST /v1/responses) over the chat pipeline.

A request becomes a chat request (instructions -> a leading system message, input items -> messages, flat function
tools -> chat tools, text.format -> response_format) and goes through `ChatCompletions.start`, so admission, tools,
structured output and the first-item rule (a failure before the first token is a real status) are the chat path's.
The model's text becomes output items as it comes (`_Output`): text goes to a message item, each tool call to a
function_call item. Without `stream` the answer is the whole Response object; with it, the typed SSE events OpenAI
sends (`event: <type>` + `data: {..., "sequence_number": n}`), ending with response.completed (response.incomplete
when max_output_tokens cut it short, response.failed on an error) and no `[DONE]`. Nothing is stored: store=true,
previous_response_id and conversations are 400s that say to send the whole conversation as input.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from pydantic import ValidationError

from runtime.engines.base import StreamError
from runtime.openai.errors import APIError, from_validation_errors
from runtime.openai.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    FunctionCall,
    FunctionDefinition,
    JSONSchemaFormat,
    NamedFunction,
    ResponseFormatJSONObject,
    ResponseFormatJSONSchema,
    ResponseFormatText,
    Tool,
    ToolCall,
)
from runtime.openai.protocol import NamedToolChoice as ChatNamedToolChoice
from runtime.openai.responses_protocol import (
    INPUT_ITEMS,
    FunctionCallInput,
    FunctionCallItem,
    FunctionTool,
    IncompleteDetails,
    InputItem,
    InputMessage,
    NamedToolChoice,
    OutputItem,
    OutputMessage,
    OutputTextPart,
    ResponseError,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
    TextConfig,
    TextFormat,
)
from runtime.openai.service import ChatCompletions, Exchange, Reply, Started, parse_body
from runtime.openai.streaming import Tally
from runtime.openai.tools import CallStart, Content, ToolEvent

# What the chat path calls a field that a Responses client wrote under another name (in its errors' param and text).
_CHAT_NAMES = (
    (re.compile(r"\bresponse_format\.json_schema\.schema\b"), "text.format.schema"),
    (re.compile(r"\bresponse_format\b"), "text.format"),
    (re.compile(r"\bmax_tokens\b"), "max_output_tokens"),
    (re.compile(r"(\btools\[\d+\])\.function\."), r"\1."),
)


class Responses:
    def __init__(self, chat: ChatCompletions):
        self.chat = chat

    async def create(self, read_body: Callable[[], Awaitable[bytes]], exchange: Exchange) -> Reply:
        request, items = parse_responses_request(await read_body())
        try:
            started = await self.chat.start(to_chat_request(request, items), exchange, id_prefix="resp_")
        except APIError as exc:
            raise _in_responses_terms(exc) from None
        echo = _Echo(request, started)
        if request.stream:
            return Reply(started.ids.id, events=_stream(started, echo), release=started.release)
        try:
            return Reply(started.ids.id, completion=await _collect(started, echo))
        finally:
            await started.release()


def parse_responses_request(raw: bytes) -> tuple[ResponsesRequest, list[InputItem]]:
    request = parse_body(raw, ResponsesRequest, "a responses request")
    if request.stream_options is not None and not request.stream:
        raise APIError(400, "stream_options is only allowed with stream=true", param="stream_options")
    return request, _input_items(request.input)


def _input_items(value: str | list[dict[str, Any]]) -> list[InputItem]:
    if isinstance(value, str):
        return [InputMessage(role="user", content=value)]
    if not value:
        raise APIError(400, "input must hold at least one item", param="input")
    items: list[InputItem] = []
    for i, raw in enumerate(value):
        kind = raw.get("type", "message")
        model = INPUT_ITEMS.get(kind) if isinstance(kind, str) else None
        if model is None:
            raise APIError(
                400, f"input[{i}] is a {str(kind)[:40]!r} item; this server reads message, function_call and "
                "function_call_output items", param=f"input[{i}].type",
            )  # fmt: skip
        try:
            items.append(model.model_validate(raw))
        except ValidationError as exc:
            # The deepest error first: for content that is neither text nor parts, what is wrong with the parts.
            errors = sorted(exc.errors(), key=lambda e: -len(e["loc"]))
            raise from_validation_errors([{**e, "loc": ("input", i, *e["loc"])} for e in errors]) from None
    return items


def to_chat_request(request: ResponsesRequest, items: Sequence[InputItem]) -> ChatCompletionRequest:
    """The chat request that asks the model for this response."""
    messages = [] if request.instructions is None else [ChatMessage(role="system", content=request.instructions)]
    for i, item in enumerate(items):
        if isinstance(item, InputMessage):
            messages.append(ChatMessage(role=item.role, content=_text(item.content)))
        elif isinstance(item, FunctionCallInput):
            call = ToolCall(id=item.call_id, function=FunctionCall(name=item.name, arguments=_arguments(item, i)))
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":  # text and calls of one turn: one assistant message
                last.tool_calls = [*(last.tool_calls or []), call]
            else:
                messages.append(ChatMessage(role="assistant", tool_calls=[call]))
        else:
            messages.append(ChatMessage(role="tool", tool_call_id=item.call_id, content=_text(item.output)))
    text_format = request.text.format if request.text else None
    return ChatCompletionRequest(
        messages=messages,
        model=request.model,
        max_completion_tokens=request.max_output_tokens,
        response_format=_response_format(text_format) if text_format else None,
        stream=request.stream,
        temperature=request.temperature,
        top_p=request.top_p,
        tools=[_chat_tool(tool) for tool in request.tools] if request.tools is not None else None,
        tool_choice=_chat_tool_choice(request.tool_choice),
        parallel_tool_calls=request.parallel_tool_calls,
        user=request.user,
    )


def _text(content: str | Sequence[Any]) -> str:
    return content if isinstance(content, str) else "\n".join(part.text for part in content)


def _arguments(item: FunctionCallInput, index: int) -> str:
    """Templates read a call's arguments as an object: they must be a JSON object as text."""
    try:
        arguments = json.loads(item.arguments)
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        raise APIError(
            400, f"input[{index}].arguments must be a JSON object as text", param=f"input[{index}].arguments"
        )
    return item.arguments


def _response_format(
    text_format: TextFormat,
) -> ResponseFormatText | ResponseFormatJSONObject | ResponseFormatJSONSchema:
    if text_format.type == "text":
        return ResponseFormatText(type="text")
    if text_format.type == "json_object":
        return ResponseFormatJSONObject(type="json_object")
    schema = JSONSchemaFormat(name=text_format.name, description=text_format.description, schema=text_format.schema_,
                              strict=text_format.strict)  # fmt: skip
    return ResponseFormatJSONSchema(type="json_schema", json_schema=schema)


def _chat_tool(tool: FunctionTool) -> Tool:
    function = FunctionDefinition(name=tool.name, description=tool.description, parameters=tool.parameters,
                                  strict=tool.strict)  # fmt: skip
    return Tool(type="function", function=function)


def _chat_tool_choice(choice: str | NamedToolChoice | None) -> str | ChatNamedToolChoice | None:
    if isinstance(choice, NamedToolChoice):
        return ChatNamedToolChoice(type="function", function=NamedFunction(name=choice.name))
    return choice


def _in_responses_terms(error: APIError) -> APIError:
    """A chat-path error about a field the client wrote under its Responses name, renamed (max_tokens ->
    max_output_tokens ...)."""
    message, param = error.message, error.param
    for pattern, name in _CHAT_NAMES:
        message = pattern.sub(name, message)
        param = pattern.sub(name, param) if param else param
    return APIError(error.status, message, param, error.code, error.headers)


# -- the answer ----------------------------------------------------------------------------------------------


_PLAIN_TEXT = TextFormat(type="text")


class _Echo:
    """The Response object's fields that repeat the request (effective values where the deployment filled them)."""

    def __init__(self, request: ResponsesRequest, started: Started):
        params = started.generation.params
        text_format = request.text.format if request.text else None
        self.fields: dict[str, Any] = {
            "id": started.ids.id,
            "created_at": started.ids.created,
            "instructions": request.instructions,
            "max_output_tokens": request.max_output_tokens,
            "model": started.ids.model,
            "parallel_tool_calls": request.parallel_tool_calls is not False,
            "temperature": params.temperature,
            "text": TextConfig(format=text_format or _PLAIN_TEXT, verbosity="medium"),
            "tool_choice": request.tool_choice or "auto",
            "tools": request.tools or [],
            "top_p": params.top_p,
            "user": request.user,
            "metadata": request.metadata or {},
            "prompt_cache_key": request.prompt_cache_key,
            "safety_identifier": request.safety_identifier,
        }

    def response(self, status: str, output: Sequence[OutputItem] = (), tally: Tally | None = None,
                 error: APIError | None = None) -> ResponseObject:  # fmt: skip
        usage = None
        if tally is not None:
            total = tally.usage()
            usage = ResponseUsage(input_tokens=total.prompt_tokens, output_tokens=total.completion_tokens,
                                  total_tokens=total.total_tokens)  # fmt: skip
        return ResponseObject(
            **self.fields,
            status=status,
            error=_response_error(error) if error else None,
            incomplete_details=_incomplete(tally) if status == "incomplete" else None,
            output=list(output),
            usage=usage,
        )


def _response_error(error: APIError) -> ResponseError:
    return ResponseError(code=error.code or ("invalid_prompt" if error.status < 500 else "server_error"),
                         message=error.message)  # fmt: skip


def _incomplete(tally: Tally | None) -> IncompleteDetails:
    cut = tally is not None and tally.choices[0].finish_reason == "length"
    return IncompleteDetails(reason="max_output_tokens" if cut else None)


def _final_status(tally: Tally) -> str:
    return "completed" if tally.choices[0].finish_reason == "stop" else "incomplete"


async def _collect(started: Started, echo: _Echo) -> ResponseObject:
    """The whole response; a StreamError anywhere becomes an APIError (nothing was sent yet)."""
    tally, output = Tally(1, started.tools), _Output()
    async for item in started.items:
        if isinstance(item, StreamError):
            raise _in_responses_terms(APIError.from_stream_error(item))
        if tally.add(item):
            output.feed(tally.events(item))
        if tally.finished:
            break
    if not tally.finished:
        raise _unfinished()
    status = _final_status(tally)
    output.finish(status)
    return echo.response(status, output.items, tally)


async def _stream(started: Started, echo: _Echo) -> AsyncIterator[str]:
    """The response's SSE events, from response.created to response.completed (or .incomplete, or .failed)."""
    event = _EventWriter()
    in_progress = echo.response("in_progress").model_dump()
    yield event("response.created", response=in_progress)
    yield event("response.in_progress", response=in_progress)
    tally, output = Tally(1, started.tools), _Output()
    failure: APIError | None = None
    async for item in started.items:
        if isinstance(item, StreamError):
            failure = _in_responses_terms(APIError.from_stream_error(item))
            break
        if tally.add(item):
            for kind, fields in output.feed(tally.events(item)):
                yield event(kind, **fields)
        if tally.finished:
            break
    if failure is None and not tally.finished:
        failure = _unfinished()
    if failure is not None:
        failed = echo.response("failed", output.snapshot(), tally, failure)
        yield event("response.failed", response=failed.model_dump())
        return
    status = _final_status(tally)
    for kind, fields in output.finish(status):
        yield event(kind, **fields)
    yield event(f"response.{status}", response=echo.response(status, output.items, tally).model_dump())


def _unfinished() -> APIError:
    return APIError(500, "the model stream ended without finishing; try again")


class _EventWriter:
    """SSE text of one response's events: each names its type and carries the next sequence number."""

    def __init__(self) -> None:
        self.sequence = 0

    def __call__(self, kind: str, **fields: Any) -> str:
        data = json.dumps({"type": kind, **fields, "sequence_number": self.sequence}, ensure_ascii=False,
                          separators=(",", ":"))  # fmt: skip
        self.sequence += 1
        return f"event: {kind}\ndata: {data}\n\n"


# -- output items --------------------------------------------------------------------------------------------

Frame = tuple[str, dict[str, Any]]  # an event's type and fields (without the sequence number)


class _Output:
    """The output items, built from the model's text as it comes: text goes to a message item, each tool call to a
    function_call item. An item is done when the next one begins or the text ends. Each step returns the stream
    events that say what happened; the whole answer ignores them."""

    def __init__(self) -> None:
        self.items: list[OutputItem] = []  # done
        self._open: _OpenText | _OpenCall | None = None

    def feed(self, events: Sequence[ToolEvent]) -> list[Frame]:
        frames: list[Frame] = []
        for event in events:
            if isinstance(event, Content):
                if not isinstance(self._open, _OpenText):
                    frames += self._begin(_OpenText)
                frames.append(self._open.add(event.text))
            elif isinstance(event, CallStart):
                frames += self._begin(lambda index, start=event: _OpenCall(index, start))
            elif isinstance(self._open, _OpenCall):  # a call's arguments follow its start
                frames.append(self._open.add(event.text))
        return frames

    def finish(self, status: str) -> list[Frame]:
        """The end of the text: the open item is done, "incomplete" when the response is."""
        return self._close("incomplete" if status == "incomplete" else "completed")

    def snapshot(self) -> list[OutputItem]:
        """The items so far, the open one as incomplete (for a failed response)."""
        return [*self.items, self._open.item("incomplete")] if self._open else list(self.items)

    def _begin(self, make: Callable[[int], _OpenText | _OpenCall]) -> list[Frame]:
        frames = self._close("completed")
        self._open = make(len(self.items))  # its place among the output items
        return frames + self._open.added()

    def _close(self, status: str) -> list[Frame]:
        if self._open is None:
            return []
        frames = self._open.done(status)
        self.items.append(self._open.item(status))
        self._open = None
        return frames


class _OpenText:
    def __init__(self, index: int):
        self.index = index
        self.id = f"msg_{uuid.uuid4().hex}"
        self.parts: list[str] = []

    def item(self, status: str) -> OutputMessage:
        return OutputMessage(id=self.id, status=status, content=[] if status == "in_progress" else [self._part()])

    def _part(self, text: str | None = None) -> OutputTextPart:
        return OutputTextPart(text="".join(self.parts) if text is None else text)

    def _at(self) -> dict[str, Any]:
        return {"item_id": self.id, "output_index": self.index, "content_index": 0}

    def added(self) -> list[Frame]:
        return [
            ("response.output_item.added", {"output_index": self.index, "item": self.item("in_progress").model_dump()}),
            ("response.content_part.added", {**self._at(), "part": self._part("").model_dump()}),
        ]

    def add(self, text: str) -> Frame:
        self.parts.append(text)
        return "response.output_text.delta", {**self._at(), "delta": text, "logprobs": []}

    def done(self, status: str) -> list[Frame]:
        part = self._part()
        return [
            ("response.output_text.done", {**self._at(), "text": part.text, "logprobs": []}),
            ("response.content_part.done", {**self._at(), "part": part.model_dump()}),
            ("response.output_item.done", {"output_index": self.index, "item": self.item(status).model_dump()}),
        ]


class _OpenCall:
    def __init__(self, index: int, start: CallStart):
        self.index = index
        self.id = f"fc_{uuid.uuid4().hex}"
        self.start = start
        self.parts: list[str] = []

    def item(self, status: str) -> FunctionCallItem:
        arguments = "".join(self.parts)
        return FunctionCallItem(id=self.id, status=status, arguments=arguments, call_id=self.start.id,
                                name=self.start.name)  # fmt: skip

    def added(self) -> list[Frame]:
        return [
            ("response.output_item.added", {"output_index": self.index, "item": self.item("in_progress").model_dump()})
        ]

    def add(self, text: str) -> Frame:
        self.parts.append(text)
        return "response.function_call_arguments.delta", {"item_id": self.id, "output_index": self.index, "delta": text}

    def done(self, status: str) -> list[Frame]:
        arguments = "".join(self.parts)
        return [
            ("response.function_call_arguments.done", {"item_id": self.id, "output_index": self.index,
                                                        "arguments": arguments}),
            ("response.output_item.done", {"output_index": self.index, "item": self.item(status).model_dump()}),
        ]  # fmt: skip
