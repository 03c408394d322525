"""The one error type of the HTTP layer, in the OpenAI envelope, and the mapping from engine stream errors."""

from __future__ import annotations

from runtime.engines.base import StreamError
from runtime.openai.protocol import ErrorBody, ErrorResponse

_STATUS_BY_KIND = {"invalid_request": 400, "context_length": 400, "unavailable": 503, "internal": 500}
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    500: "internal_server_error",
    503: "service_unavailable",
}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    @property
    def type(self) -> str:
        return _TYPE_BY_STATUS.get(self.status, "invalid_request_error")

    def body(self) -> dict:
        return ErrorResponse(
            error=ErrorBody(message=self.message, type=self.type, param=self.param, code=self.code)
        ).model_dump()

    @classmethod
    def from_stream_error(cls, error: StreamError) -> APIError:
        code = "context_length_exceeded" if error.kind == "context_length" else None
        return cls(_STATUS_BY_KIND.get(error.kind, 500), error.message, error.param, code)
