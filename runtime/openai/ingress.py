"""The OpenAI-compatible HTTP app: routes, auth, and the translation of every failure into the OpenAI error envelope.

It talks to models through a `ModelBackend` (Ray Serve handles in production, in-process engines in tests), so the
HTTP layer is tested without Ray. It reads the first item of a model stream before choosing the status code: a
failure before the first token is a real 4xx/5xx, not a 200 followed by an error.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime.engines.base import GenerationRequest, StreamError
from runtime.openai.convert import to_generation_request
from runtime.openai.errors import APIError
from runtime.openai.metering import Meter, OnRecord
from runtime.openai.protocol import ChatCompletionRequest, ModelCard, ModelList
from runtime.openai.streaming import ChunkWriter, ResponseIds, StreamItem, collect, stream_events
from runtime.plan import DeploymentPlan

logger = logging.getLogger("aana.ingress")

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "function-after", "function-before"}


class Admission:
    """Counts requests in flight and, once draining, turns new ones away so `aana down` can wait for the rest."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0

    def enter(self) -> None:
        if self.draining:
            raise APIError(503, "the server is shutting down and takes no new requests; retry later", code="draining")
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1


@dataclass(frozen=True)
class ModelHealth:
    problem: str | None = None  # None: ready
    load: dict[str, int] = field(default_factory=dict)


class ModelBackend(Protocol):
    def stream(self, model_id: str, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        """The model's deltas; closing the iterator must stop the generation."""

    async def health(self) -> dict[str, ModelHealth]:
        """model id -> whether it answers, and its load."""


def create_app(
    backend: ModelBackend,
    deployments: Sequence[DeploymentPlan],
    api_key: str | None = None,
    admission: Admission | None = None,
    on_record: OnRecord | None = None,
) -> FastAPI:
    app = FastAPI(title="aana", summary="OpenAI-compatible chat completions", docs_url="/docs", redoc_url=None)
    admission = admission or Admission()
    models = {d.model_id: d for d in deployments}
    created = int(time.time())
    _install_error_handlers(app)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise APIError(401, "Incorrect API key provided; send `Authorization: Bearer <key>`", code="invalid_api_key")

    def model_list(request: Request) -> dict[str, Any]:
        authorize(request)
        cards = [ModelCard(id=d.model_id, created=created, max_model_len=d.max_model_len) for d in deployments]
        return ModelList(data=cards).model_dump()

    async def chat_completions(request: Request) -> Any:
        authorize(request)
        admission.enter()
        meter = Meter(on_record)
        try:
            response = await _complete(request, meter)
        except APIError as exc:
            admission.leave()
            meter.finish(exc.status)
            raise
        except BaseException:
            admission.leave()
            meter.finish(500)
            raise
        if isinstance(response, StreamingResponse):
            response.body_iterator = _when_done(response.body_iterator, admission, meter)
        else:
            admission.leave()
            meter.finish(response.status_code)
        return response

    async def _complete(request: Request, meter: Meter) -> Any:
        body = await _parse_body(request)
        meter.model, meter.stream = body.model, bool(body.stream)
        if body.stream_options is not None and not body.stream:
            raise APIError(400, "stream_options is only allowed with stream=true", param="stream_options")
        plan = models.get(body.model)
        if plan is None:
            raise APIError(
                404,
                f"The model `{body.model}` does not exist. Available models: {', '.join(models)}",
                param="model",
                code="model_not_found",
            )
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        meter.request_id = request_id
        generation = to_generation_request(body, request_id, plan.sampling, plan.supports, plan.engine)
        meter.choices = generation.params.n
        items = meter.watch(backend.stream(plan.model_id, generation))
        first = await _first_item(items)
        ids = ResponseIds(id=request_id, created=int(time.time()), model=plan.model_id)
        chained = _chain(first, items)
        headers = {"x-request-id": request_id}
        n, logprobs = generation.params.n, generation.params.logprobs is not None
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = stream_events(chained, ChunkWriter(ids, include_usage, logprobs), n)
            return StreamingResponse(events, media_type="text/event-stream", headers=_SSE_HEADERS | headers)
        completion = await collect(chained, ids, n, logprobs)
        return JSONResponse(completion.model_dump(), headers=headers)

    async def health() -> JSONResponse:
        answers = await backend.health()
        models = {
            name: {"status": "unavailable", "reason": h.problem} if h.problem else {"status": "ready", **h.load}
            for name, h in answers.items()
        }
        failing = {name: h.problem for name, h in answers.items() if h.problem}
        if not failing:
            return JSONResponse({"status": "ok", "models": models})
        error = APIError(503, "not ready: " + "; ".join(f"{k}: {v}" for k, v in failing.items()))
        return JSONResponse({"status": "unavailable", "models": models} | error.body(), status_code=503)

    for prefix in ("/v1", ""):
        app.add_api_route(f"{prefix}/chat/completions", chat_completions, methods=["POST"])
        app.add_api_route(f"{prefix}/models", model_list, methods=["GET"])
    app.add_api_route("/health", health, methods=["GET"])
    return app


async def _when_done(events: AsyncIterator[str], admission: Admission, meter: Meter) -> AsyncIterator[str]:
    try:
        async for event in events:
            yield event
    finally:
        admission.leave()
        meter.finish(200)


async def _parse_body(request: Request) -> ChatCompletionRequest:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc.errors()) from None


def _validation_error(errors: Sequence[Any]) -> APIError:
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


async def _first_item(items: AsyncIterator[StreamItem]) -> StreamItem:
    try:
        first = await items.__anext__()
    except StopAsyncIteration:
        raise APIError(500, "the model returned nothing; try again") from None
    if isinstance(first, StreamError):
        await items.aclose()
        raise APIError.from_stream_error(first)
    return first


async def _chain(first: StreamItem, rest: AsyncIterator[StreamItem]) -> AsyncIterator[StreamItem]:
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        await rest.aclose()  # a client that went away stops the generation


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        error = _validation_error(exc.errors())
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {exc.detail}"
        if exc.status_code == 404:
            message += "; the API is served at /v1/chat/completions and /v1/models"
        return JSONResponse(APIError(exc.status_code, message).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The boundary: log the traceback for the operator, never send it to the client.
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        error = APIError(500, f"internal error ({type(exc).__name__}); the server log has the details")
        return JSONResponse(error.body(), status_code=500)
