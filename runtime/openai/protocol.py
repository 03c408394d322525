"""Wire models of the OpenAI Chat Completions, Completions, Embeddings and Models APIs, in the OpenAI reference's names and field order.

Requests forbid unknown fields (OpenAI answers "Unrecognized request argument"), so no parameter is silently dropped.
Extensions that vLLM also accepts come after the standard fields, marked as such. Imports only pydantic.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    SerializerFunctionWrapHandler,
    StrictBool,
    field_validator,
    model_serializer,
)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # vLLM's server bounds seeds (and engines their integers) to int64
MAX_MODEL_ID_CHARS = 256
MAX_STOP_CHARS = 1024


class _Wire(BaseModel):
    # No NaN or Infinity: every number a client sends must be finite.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TextPart(_Wire):
    type: Literal["text"]
    text: str


class FunctionCall(_Wire):
    name: str
    arguments: str  # JSON text, as the model wrote it


class ToolCall(_Wire):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Wire):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # assistant messages: the calls it made
    tool_call_id: str | None = None  # tool messages: the call this is the result of
    refusal: str | None = None  # assistant messages, as the SDK sends them back


class FunctionDefinition(_Wire):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")  # OpenAI's rule for function names
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema of the arguments object
    strict: StrictBool | None = None


class Tool(_Wire):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Wire):
    name: str


class NamedToolChoice(_Wire):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(_Wire):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormatText(_Wire):
    type: Literal["text"]


class ResponseFormatJSONObject(_Wire):
    type: Literal["json_object"]


class ResponseFormatJSONSchema(_Wire):
    type: Literal["json_schema"]
    json_schema: JSONSchemaFormat


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJSONObject | ResponseFormatJSONSchema, Field(discriminator="type")
]


class StreamOptions(_Wire):
    include_usage: StrictBool = False


class ChatCompletionRequest(_Wire):
    messages: list[ChatMessage] = Field(min_length=1)
    model: str = Field(max_length=MAX_MODEL_ID_CHARS)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT64_MAX)
    max_tokens: int | None = Field(None, ge=1, le=INT64_MAX)
    metadata: dict[str, str] | None = None
    n: int | None = Field(None, ge=1, le=128)  # OpenAI's limit
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    response_format: ResponseFormat | None = None
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    stop: str | list[str] | None = None
    store: StrictBool | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    tools: list[Tool] | None = Field(None, max_length=128)  # OpenAI's limit
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    user: str | None = None
    # Extensions (vLLM's names): sampling controls the OpenAI API does not have.
    top_k: int | None = Field(None, ge=-1, le=INT64_MAX)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)
    ignore_eos: StrictBool | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        return _check_stops(value)


def _check_stops(value: str | list[str] | None) -> str | list[str] | None:
    if isinstance(value, list) and len(value) > 4:
        raise ValueError("at most 4 stop sequences are allowed")
    for stop in [value] if isinstance(value, str) else value or []:
        if len(stop) > MAX_STOP_CHARS:
            raise ValueError(f"a stop sequence may be at most {MAX_STOP_CHARS} characters")
    return value


# -- legacy completions (/v1/completions) ---------------------------------------------------------------------

MAX_PROMPTS = 2048  # prompts (or embedding inputs) in one request: OpenAI's limit for an input array


def _prompt(value: Any) -> Any:
    """A prompt or embedding input: a text, texts, token ids, or lists of token ids (none empty; booleans are not
    token ids)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(type(v) is int for v in value):
        return value  # one prompt of token ids: its length is the model's to bound (max_model_len)
    if isinstance(value, list) and 0 < len(value) <= MAX_PROMPTS:
        if all(isinstance(v, str) for v in value):
            return value
        if all(isinstance(v, list) and v and all(type(t) is int for t in v) for v in value):
            return value
    raise ValueError(
        f"must be a string, a list of strings, a list of token ids, or a list of lists of token ids (1 to "
        f"{MAX_PROMPTS} items, none empty)"
    )


Prompt = Annotated[str | list[str] | list[int] | list[list[int]], PlainValidator(_prompt)]


class CompletionRequest(_Wire):
    model: str = Field(max_length=MAX_MODEL_ID_CHARS)
    prompt: Prompt  # a text, texts, token ids, or lists of token ids
    best_of: int | None = Field(None, ge=1, le=128)
    echo: StrictBool | None = False
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: int | None = Field(None, ge=0, le=20)  # the k most likely tokens at each position (OpenAI: up to 5)
    max_tokens: int | None = Field(None, ge=1, le=INT64_MAX)
    n: int | None = Field(None, ge=1, le=128)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    stop: str | list[str] | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    suffix: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    user: str | None = None
    # Extensions (vLLM's sampling parameters)
    top_k: int | None = Field(None, ge=-1, le=INT64_MAX)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)
    ignore_eos: StrictBool | None = None

    _stops = field_validator("stop")(classmethod(lambda cls, value: _check_stops(value)))


class CompletionLogprobs(BaseModel):
    """The legacy logprobs shape: parallel lists, one entry per token."""

    text_offset: list[int]
    token_logprobs: list[float | None]
    tokens: list[str]
    top_logprobs: list[dict[str, float] | None]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


# -- embeddings (/v1/embeddings) ------------------------------------------------------------------------------


class EmbeddingsRequest(_Wire):
    model: str = Field(max_length=MAX_MODEL_ID_CHARS)
    input: Prompt  # a text, texts, token ids, or lists of token ids
    dimensions: int | None = Field(None, ge=1)
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str  # floats, or base64 of little-endian float32
    index: int


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None  # only when the model called tools: OpenAI leaves it out otherwise

    @model_serializer(mode="wrap")
    def _without_absent_calls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if data.get("tool_calls") is None:
            data.pop("tool_calls", None)
        return data


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatCompletionTokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    """A choice's logprobs: one entry per token. OpenAI also sends `refusal`; vLLM, followed here, does not."""

    content: list[ChatCompletionTokenLogprob] | None


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class DeltaFunctionCall(BaseModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(BaseModel):
    """A piece of one tool call: the first names it (index, id, type, function name), later ones add arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "aana"
    # Extension: the maximum context length, as vLLM reports it.
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
