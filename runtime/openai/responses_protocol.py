"""Wire models of the OpenAI Responses API (POST /v1/responses), the subset this server serves, in the OpenAI
reference's names and field order. Imports only pydantic.

The request forbids unknown fields. Fields of the API that need what this server does not have (stored responses,
conversations, prompt templates, reasoning controls, built-in tools) are declared so that setting one is a 400 naming
it and why (`NEUTRAL`), while their neutral values are accepted. The `input` items are
validated one by one (`INPUT_ITEMS`), so an error names the item the client wrote (`input[2].call_id`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from runtime.openai.protocol import INT64_MAX, MAX_MODEL_ID_CHARS

_NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function and schema names
ItemStatus = Literal["in_progress", "completed", "incomplete"]


class _Wire(BaseModel):
    # No NaN or Infinity; a field with an alias (`schema`) is written under its wire name.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, serialize_by_alias=True)


# -- input items ---------------------------------------------------------------------------------------------


class InputText(_Wire):
    type: Literal["input_text"]
    text: str


class OutputText(_Wire):
    """An earlier response's text, sent back as input."""

    type: Literal["output_text"]
    text: str
    annotations: list[Any] = []
    logprobs: list[Any] | None = None


InputContent = Annotated[InputText | OutputText, Field(discriminator="type")]


class InputMessage(_Wire):
    """A message: the short form ({role, content}), an item ({type: "message", ...}), or an earlier response's
    output message sent back (with its id and status)."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputContent]
    id: str | None = None
    status: ItemStatus | None = None
    phase: Literal["commentary", "final_answer"] | None = None


class FunctionCallInput(_Wire):
    """A tool call the model made earlier."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str  # JSON text
    id: str | None = None
    status: ItemStatus | None = None


class FunctionCallOutputInput(_Wire):
    """The result of a tool call, for the model to read."""

    type: Literal["function_call_output"]
    call_id: str
    output: str | list[InputText]
    id: str | None = None
    status: ItemStatus | None = None


InputItem = InputMessage | FunctionCallInput | FunctionCallOutputInput
# An item's `type` -> its model; an item without a type is a message.
INPUT_ITEMS: dict[str, type[InputItem]] = {
    "message": InputMessage,
    "function_call": FunctionCallInput,
    "function_call_output": FunctionCallOutputInput,
}


# -- the request ---------------------------------------------------------------------------------------------


class FunctionTool(_Wire):
    """A function the model may call (the Responses API's flat form of chat's {"type", "function": {...}})."""

    type: Literal["function"]
    name: str = Field(pattern=_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema of the arguments object
    strict: StrictBool | None = None


class NamedToolChoice(_Wire):
    type: Literal["function"]
    name: str


class TextFormat(_Wire):
    """`text.format`: plain text, any JSON object, or JSON that follows a schema (`name` and `schema` with it)."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, pattern=_NAME)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: StrictBool | None = None

    @model_serializer(mode="wrap")
    def _only_its_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        return data if self.type == "json_schema" else {"type": self.type}

    @model_validator(mode="after")
    def _fields_of_its_type(self) -> TextFormat:
        if self.type != "json_schema":
            extra = [k for k in ("name", "schema_", "description", "strict") if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"{extra[0].rstrip('_')} is only allowed with type json_schema")
        elif self.name is None:
            raise ValueError("a json_schema format needs a `name`")
        return self


class TextConfig(_Wire):
    format: TextFormat | None = None
    verbosity: Literal["medium"] | None = None  # the default; the model has no other


class StreamOptions(_Wire):
    # Obfuscation pads events against a side channel of OpenAI's; this server sends no padding either way.
    include_obfuscation: StrictBool | None = None


_LEAVE_OUT = "this server does not support it; leave it out"
# Fields served only in their neutral form: the values accepted, and what to do instead.
NEUTRAL: dict[str, tuple[tuple[Any, ...], str]] = {
    "store": ((None, False), "stored responses are not kept by this server; send store=false"),
    "previous_response_id": ((None,), "this server keeps no responses to continue from; leave previous_response_id "
                                      "out and send the whole conversation as input items"),
    "conversation": ((None,), "this server keeps no conversations; send the whole conversation as input items"),
    "prompt": ((None,), "this server keeps no prompt templates; send the text as instructions and input"),
    "background": ((None, False), "background responses need stored responses, which this server does not keep; "
                                  "send background=false"),
    "include": ((None, []), "this server produces no extra output to include; leave `include` out"),
    "reasoning": ((None, {}), "reasoning options are not supported by this server; leave `reasoning` out"),
    "truncation": ((None, "disabled"), 'truncation "auto" is not supported; send truncation="disabled" and keep the '
                                       "input within the model's context"),
    "top_logprobs": ((None, 0), "logprobs are not served on /v1/responses; use /v1/chat/completions with logprobs"),
    "max_tool_calls": ((None,), "it limits built-in tools, which this server does not have; leave it out"),
    "service_tier": ((None, "auto", "default"), 'this server has one service tier; send "auto" or leave it out'),
    "context_management": ((None, []), _LEAVE_OUT),
    "prompt_cache_retention": ((None, "in_memory"), 'prompts are cached in memory only; send "in_memory" or leave '
                                                     "prompt_cache_retention out"),
    **{name: ((None,), _LEAVE_OUT) for name in
       ("moderation", "image", "access_programs", "background_options", "prompt_cache_options")},
}  # fmt: skip


class ResponsesRequest(_Wire):
    model: str = Field(max_length=MAX_MODEL_ID_CHARS)
    input: str | list[dict[str, Any]]  # items, each validated against INPUT_ITEMS
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=INT64_MAX)
    metadata: dict[str, str] | None = None
    parallel_tool_calls: StrictBool | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    text: TextConfig | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    tools: list[FunctionTool] | None = Field(None, max_length=128)
    top_p: float | None = Field(None, gt=0, le=1)
    user: str | None = None
    prompt_cache_key: str | None = None  # a routing hint; the engine's prefix cache needs none
    safety_identifier: str | None = None
    # Served only in their neutral form (NEUTRAL says why for each).
    store: StrictBool | None = None
    previous_response_id: str | None = None
    conversation: Any = None
    prompt: Any = None
    background: StrictBool | None = None
    include: list[str] | None = None
    reasoning: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    max_tool_calls: int | None = None
    service_tier: str | None = None
    context_management: list[Any] | None = None
    moderation: Any = None
    image: Any = None
    access_programs: Any = None
    background_options: Any = None
    prompt_cache_options: Any = None
    prompt_cache_retention: str | None = None

    @field_validator(*NEUTRAL)
    @classmethod
    def _neutral(cls, value: Any, info: ValidationInfo) -> Any:
        neutral, fix = NEUTRAL[info.field_name]
        if not any(value is v or (type(value) is type(v) and value == v) for v in neutral):  # False is not 0
            raise ValueError(fix)
        return value


# -- the response --------------------------------------------------------------------------------------------


class OutputTextPart(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = []


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    status: ItemStatus
    role: Literal["assistant"] = "assistant"
    content: list[OutputTextPart]


class FunctionCallItem(BaseModel):
    id: str
    type: Literal["function_call"] = "function_call"
    status: ItemStatus
    arguments: str
    call_id: str
    name: str


OutputItem = OutputMessage | FunctionCallItem


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = InputTokensDetails()
    output_tokens: int
    output_tokens_details: OutputTokensDetails = OutputTokensDetails()
    total_tokens: int


class ResponseError(BaseModel):
    code: str
    message: str


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"] | None


class ResponseObject(BaseModel):
    """The Response object: the whole answer, and the snapshot that stream lifecycle events carry."""

    model_config = ConfigDict(serialize_by_alias=True)

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "failed", "in_progress", "incomplete"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: None = None
    reasoning: None = None
    store: bool = False
    temperature: float | None
    text: TextConfig
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice
    tools: list[FunctionTool]
    top_p: float | None
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None
    metadata: dict[str, str]
    # After OpenAI's fields, as the SDK reads them.
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
