"""The OpenAI-compatible HTTP router: routes, auth and admission as dependencies, and every failure in the OpenAI
error envelope.

Each route is a few lines that call `runtime.openai.service`. Models are reached through `ModelClient`s (Ray Serve
handle adapters in production, in-process `ModelServer`s in tests), so the HTTP layer is tested without Ray.
An `Exchange` follows one request from admission to its last byte: it counts the request in flight (so `aana down`
can drain) and hands its meter's record to the recorder when the response, streamed or not, is done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from runtime.model_api import ModelCard, ModelClient
from runtime.openai.auth import Authenticator, Caller
from runtime.openai.completions import Completions
from runtime.openai.embeddings import Embeddings
from runtime.openai.errors import APIError, from_validation_errors
from runtime.openai.metering import Meter, OnRecord
from runtime.openai.metrics import CONTENT_TYPE, ServingMetrics
from runtime.openai.responses import Responses
from runtime.openai.service import (
    Admission,
    ChatCompletions,
    Exchange,
    QuotaClient,
    Reply,
    health_report,
    model_list,
    model_object,
)
from runtime.openai.stored import StoredCompletions
from runtime.plan import ANY_HOST, DEFAULT_MAX_BODY_BYTES
from runtime.records import CLIENT_CLOSED

logger = logging.getLogger("aana.ingress")

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def respond(exchange: Exchange, work: Awaitable[Reply]) -> Response:
    """The response for one exchange; it ends the exchange when the answer is sent, whatever happens."""
    try:
        reply = await work
    except APIError as exc:
        exchange.close(exc.status)
        raise
    except (asyncio.CancelledError, ClientDisconnect):
        exchange.close(CLIENT_CLOSED)  # the client went away before its answer
        raise
    except BaseException:
        exchange.close(500)
        raise
    headers = {"x-request-id": reply.request_id, **exchange.headers}
    if reply.events is None:
        exchange.close(200)
        return JSONResponse(reply.completion.model_dump(), headers=headers)
    return _ExchangeStream(exchange, reply, media_type="text/event-stream", headers=_SSE_HEADERS | headers)


class _ExchangeStream(StreamingResponse):
    """An SSE response that ends its exchange and closes the model's stream however sending ends, also when the
    client left before the first byte (then Starlette never iterates the body, and no generator's `finally` runs)."""

    def __init__(self, exchange: Exchange, reply: Reply, **kwargs: Any):
        super().__init__(reply.events, **kwargs)
        self.exchange = exchange
        self.release = reply.release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                if self.release is not None:
                    await self.release()
            finally:  # whatever closing the model's stream does, the exchange ends (admission, gate, record)
                self.exchange.close(200)


class HostAllowList:
    """ASGI middleware: requests whose Host header names no allowed host get 400 in the OpenAI envelope (a browser
    page that rebinds its own domain to this address cannot drive the API)."""

    def __init__(self, app: Any, allowed: Sequence[str]):
        self.app = app
        self.allowed = {host.lower().strip("[]") for host in allowed}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
            name = host[1 : host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
            if name not in self.allowed:
                error = APIError(400, "this server does not answer for that Host header; see [server] allowed_hosts",
                                 code="invalid_host")  # fmt: skip
                await JSONResponse(error.body(), status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def json_body(request: Request, max_bytes: int) -> Callable[[], Awaitable[bytes]]:
    """A reader of the request's body that insists on JSON and stops past max_bytes (before parsing anything)."""

    async def read() -> bytes:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            shown = media[:60] or "none"
            raise APIError(415, f"send the body as JSON with `Content-Type: application/json` (got {shown})")
        too_large = APIError(
            413, f"the request body is larger than this server accepts ({max_bytes} bytes); send less, or raise "
            "[server] max_body_mb"
        )  # fmt: skip
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    return read


def bearer_auth(auth: Authenticator) -> Callable[[Request], Awaitable[Caller]]:
    """A dependency that names the caller from `Authorization: Bearer <key>` (401 when authentication is on and the
    key is missing, wrong, revoked or expired)."""

    async def authorize(request: Request) -> Caller:  # async: run on the event loop, no thread hop
        return auth(request.headers.get("authorization", ""))

    return authorize


def create_app(
    models: Mapping[str, ModelClient],
    cards: Sequence[ModelCard],
    api_key: str | None = None,
    admission: Admission | None = None,
    on_record: OnRecord | None = None,
    share: int = 1,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    allowed_hosts: Sequence[str] = ANY_HOST,
    metrics: ServingMetrics | None = None,
    scrape: Callable[[], Awaitable[str]] | None = None,
    auth: Authenticator | None = None,
    quotas: QuotaClient | None = None,
    stored: StoredCompletions | None = None,
) -> FastAPI:
    """The app over `models`. `share`: how many ingress replicas split each model's admission capacity. With an
    API key, the interactive docs and the OpenAPI document are off (they would answer without the key). `metrics`:
    this replica's; `scrape`: the exposition of the whole app for GET /metrics (default: this replica's alone).
    `auth`: who may call (default: the spec's `api_key` alone); `quotas`: where keys' limits are counted; `stored`:
    where `store: true` completions are kept (None: not at all)."""
    auth = auth or Authenticator(api_key)
    docs = {} if not auth.on and auth.mode != "keys" else {"docs_url": None, "openapi_url": None}
    app = FastAPI(
        title="aana",
        summary="OpenAI-compatible chat completions, completions, embeddings and responses",
        redoc_url=None,
        **docs,
    )
    _install_error_handlers(app)
    if "*" not in allowed_hosts:
        app.add_middleware(HostAllowList, allowed=allowed_hosts)
    chat = ChatCompletions(models, cards, share, quotas, stored)
    admission = admission or Admission()
    caller_of = bearer_auth(auth)
    created = int(time.time())

    metrics = metrics or ServingMetrics()

    async def admitted(caller: Caller = Depends(caller_of)) -> Exchange:
        try:
            admission.enter()
        except APIError as exc:  # draining: turned away before any model was asked
            metrics.requests.labels("", str(exc.status)).inc()
            metrics.rejected.labels("", str(exc.status)).inc()
            raise
        meter = Meter(on_record, metrics)
        meter.key_id = caller.key_id
        return Exchange(admission, meter, caller)

    async def operator(request: Request) -> None:
        """The probes and metrics stay open for load balancers and scrapers, unless keys are on: then any valid key."""
        if auth.keys_on:
            await caller_of(request)

    async def exposition() -> str:
        return metrics.exposition()

    async def metrics_route(_: None = Depends(operator)) -> Response:
        return Response(await (scrape or exposition)(), media_type=CONTENT_TYPE)

    async def chat_completions(request: Request, exchange: Exchange = Depends(admitted)) -> Response:
        return await respond(exchange, chat.create(json_body(request, max_body_bytes), exchange))

    completions, embeddings, responses = Completions(chat), Embeddings(chat), Responses(chat)

    async def completions_route(request: Request, exchange: Exchange = Depends(admitted)) -> Response:
        return await respond(exchange, completions.create(json_body(request, max_body_bytes), exchange))

    async def embeddings_route(request: Request, exchange: Exchange = Depends(admitted)) -> Response:
        return await respond(exchange, embeddings.create(json_body(request, max_body_bytes), exchange))

    async def responses_route(request: Request, exchange: Exchange = Depends(admitted)) -> Response:
        return await respond(exchange, responses.create(json_body(request, max_body_bytes), exchange))

    def models_route(caller: Caller = Depends(caller_of)) -> dict[str, Any]:
        return model_list([c for c in cards if caller.may_use(c.id)], created)

    def model_route(model_id: str, caller: Caller = Depends(caller_of)) -> dict[str, Any]:
        return model_object([c for c in cards if caller.may_use(c.id)], model_id, created)

    async def health(_: None = Depends(operator)) -> JSONResponse:
        status, body = await health_report(models)
        return JSONResponse(body, status_code=status)

    def keeper() -> StoredCompletions:
        if stored is None:
            raise APIError(404, "this server does not store chat completions ([server] store_completions is off)",
                           code="not_found")  # fmt: skip
        return stored

    async def list_stored(request: Request, caller: Caller = Depends(caller_of), model: str | None = None,
                          after: str | None = None, limit: int = 20, order: str = "asc") -> dict[str, Any]:  # fmt: skip
        metadata = {k[len("metadata[") : -1]: v for k, v in request.query_params.items() if k.startswith("metadata[")}
        return await keeper().list(caller, model, after, limit, order, metadata)

    async def get_stored(completion_id: str, caller: Caller = Depends(caller_of)) -> dict[str, Any]:
        return await keeper().retrieve(caller, completion_id)

    async def stored_messages(completion_id: str, caller: Caller = Depends(caller_of), after: str | None = None,
                              limit: int = 20, order: str = "asc") -> dict[str, Any]:  # fmt: skip
        return await keeper().messages(caller, completion_id, after, limit, order)

    async def delete_stored(completion_id: str, caller: Caller = Depends(caller_of)) -> dict[str, Any]:
        return await keeper().delete(caller, completion_id)

    for prefix in ("/v1", ""):
        app.add_api_route(f"{prefix}/chat/completions", chat_completions, methods=["POST"])
        app.add_api_route(f"{prefix}/chat/completions", list_stored, methods=["GET"])
        app.add_api_route(f"{prefix}/chat/completions/{{completion_id}}", get_stored, methods=["GET"])
        app.add_api_route(f"{prefix}/chat/completions/{{completion_id}}", delete_stored, methods=["DELETE"])
        app.add_api_route(f"{prefix}/chat/completions/{{completion_id}}/messages", stored_messages, methods=["GET"])
        app.add_api_route(f"{prefix}/models", models_route, methods=["GET"])
        app.add_api_route(f"{prefix}/completions", completions_route, methods=["POST"])
        app.add_api_route(f"{prefix}/embeddings", embeddings_route, methods=["POST"])
        app.add_api_route(f"{prefix}/responses", responses_route, methods=["POST"])
        app.add_api_route(f"{prefix}/models/{{model_id:path}}", model_route, methods=["GET"])

    async def live() -> dict[str, str]:  # liveness: this process answers; it asks no model
        return {"status": "alive"}

    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/metrics", metrics_route, methods=["GET"])
    app.add_api_route("/live", live, methods=["GET"])
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        error = from_validation_errors(exc.errors())
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {exc.detail}"
        if exc.status_code == 404:
            message += (
                "; the API is served at /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses and "
                "/v1/models"
            )
        return JSONResponse(APIError(exc.status_code, message).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The boundary: log the traceback for the operator, never send it to the client.
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        error = APIError(500, f"internal error ({type(exc).__name__}); the server log has the details")
        return JSONResponse(error.body(), status_code=500)
