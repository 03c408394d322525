"""The one error type of the HTTP layer, in the OpenAI envelope, and the mappings into it: from engine stream errors
and from pydantic's validation errors (a 400 naming the field the client wrote, never FastAPI's 422)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from runtime.engines.base import StreamError
from runtime.openai.protocol import ErrorBody, ErrorResponse

_STATUS_BY_KIND = {"invalid_request": 400, "context_length": 400, "unavailable": 503, "timeout": 504, "internal": 500}
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_server_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}  # e.g. Retry-After on a 429

    @property
    def type(self) -> str:
        return _TYPE_BY_STATUS.get(self.status, "invalid_request_error")

    def body(self) -> dict:
        return ErrorResponse(
            error=ErrorBody(message=self.message, type=self.type, param=self.param, code=self.code)
        ).model_dump()

    @classmethod
    def from_stream_error(cls, error: StreamError) -> APIError:
        code = {"context_length": "context_length_exceeded", "timeout": "timeout"}.get(error.kind)
        return cls(_STATUS_BY_KIND.get(error.kind, 500), error.message, error.param, code)


# Parts of a pydantic error location that name a union member or a validator, not a field the client wrote.
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "function-after", "function-before"}


def from_validation_errors(errors: Sequence[Any]) -> APIError:
    """The first of pydantic's errors as a 400 in OpenAI's words, with `param` the path the client wrote."""
    err = errors[0]
    loc = [p for p in err["loc"] if p != "body"]
    param = _param(loc)
    if err["type"] == "extra_forbidden":
        return APIError(400, f"Unrecognized request argument supplied: {param}", param=param)
    if err["type"] == "missing":
        return APIError(400, f"Missing required parameter: '{param}'", param=param)
    if err["type"] == "too_short" and param == "messages":
        return APIError(400, "'messages' must contain at least one message", param=param)
    message = err["msg"].removeprefix("Value error, ")
    return APIError(400, f"Invalid value for '{param}': {message}", param=param)


def _param(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _TYPE_TAGS or "[" in str(part) or str(part)[:1].isupper():
            break  # a union member's name, not a field the client wrote
        else:
            out += f".{part}" if out else str(part)
    return out
