"""The OpenAI endpoints' logic, apart from HTTP: chat completions, the model list and the health report.

`ChatCompletions.create` takes a reader of the raw body and the request's exchange and returns a `Reply`: a whole
completion, or the SSE events of a stream. It reads the first item of the model's stream before returning, so a failure before the
first token raises `APIError` with a real status instead of a 200 followed by an error. The router
(`runtime.openai.ingress`) turns replies and errors into responses; it holds no logic of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from runtime.engines.base import GenerationParams, GenerationRequest, StreamError
from runtime.model_api import ModelCard, ModelClient, ModelHealth, StreamItem
from runtime.openai.auth import ANYONE, Caller
from runtime.openai.convert import to_generation_request
from runtime.openai.errors import APIError, from_validation_errors
from runtime.openai.metering import Meter, model_label
from runtime.openai.protocol import ChatCompletion, ChatCompletionRequest, ModelList
from runtime.openai.protocol import ModelCard as WireModelCard
from runtime.openai.quotas import Decision
from runtime.openai.stored import StoredCompletions
from runtime.openai.streaming import ChunkWriter, ResponseIds, collect, stream_events
from runtime.openai.tools import ToolUse, plan_tools

logger = logging.getLogger("aana.ingress")


@dataclass(frozen=True)
class Reply:
    """An answer ready to send: `completion` for a whole response (any wire model), `events` (SSE text) for a
    stream."""

    request_id: str
    completion: BaseModel | None = None
    events: AsyncIterator[str] | None = None
    # Closes the model's stream (idempotent): for a response that is never sent, e.g. the client left first.
    release: Callable[[], Awaitable[None]] | None = None


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


class Exchange:
    """One admitted request, until its response has been sent (or has failed): it holds the request's meter and
    whatever must be released when it ends, and ends exactly once."""

    def __init__(self, admission: Admission, meter: Meter, caller: Caller = ANYONE):
        self.admission = admission
        self.meter = meter
        self.caller = caller
        self.headers: dict[str, str] = {}  # sent with the answer, whatever it is (the key's rate-limit state)
        self._open = True
        self._on_close: list[Callable[[Meter], None]] = []

    def defer(self, release: Callable[[Meter], None]) -> None:
        self._on_close.append(release)

    def close(self, status_code: int) -> None:
        if not self._open:
            return
        self._open = False
        self.admission.leave()
        for release in self._on_close:
            release(self.meter)
        self.meter.finish(status_code)


class ModelGate:
    """Admission for one model: at most `capacity` requests in flight (running or waiting for a replica) through
    this ingress; one more gets 429 at once, with a Retry-After from the model's recent completion rate."""

    WINDOW_S = 60.0

    def __init__(self, model: str, capacity: int):
        self.model = model
        self.capacity = capacity
        self.in_flight = 0
        self.completions: deque[float] = deque(maxlen=256)  # monotonic times of recent completed requests

    def enter(self) -> None:
        if self.in_flight >= self.capacity:
            seconds = self.retry_after_s()
            raise APIError(
                429,
                f"model {self.model} is at capacity ({self.capacity} requests running or queued); retry after "
                f"{seconds} s",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(seconds)},
            )
        self.in_flight += 1

    def leave(self, meter: Meter) -> None:
        self.in_flight -= 1
        if meter.completed:
            self.completions.append(time.monotonic())

    def retry_after_s(self) -> int:
        """About when a slot frees: the time between completions lately (1 s when nothing completed lately)."""
        now = time.monotonic()
        recent = [t for t in self.completions if now - t <= self.WINDOW_S]
        if len(recent) < 2:
            return 1
        rate = (len(recent) - 1) / max(recent[-1] - recent[0], 1e-3)  # completions per second
        return min(60, max(1, math.ceil(1 / rate)))


class QuotaClient(Protocol):
    """Per-key limits shared by every front replica (`runtime.openai.quotas.Quotas`, in-process or in a Ray actor)."""

    async def take(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int) -> Decision: ...

    async def settle(self, key_id: str, tpm: int | None, reserved: int, used: int) -> None: ...


class ChatCompletions:
    def __init__(self, models: Mapping[str, ModelClient], cards: Sequence[ModelCard], share: int = 1,
                 quotas: QuotaClient | None = None, stored: StoredCompletions | None = None):  # fmt: skip
        """`share`: the ingress replicas splitting each model's capacity (each admits its part, at least 1).
        `quotas`: where keys' requests and tokens per minute are counted (None: keys' limits are not enforced)."""
        self.models = dict(models)
        self.cards = {card.id: card for card in cards}
        self.gates = {card.id: ModelGate(card.id, max(1, card.limits.capacity // share)) for card in cards}
        self.quotas = quotas
        self.stored = stored  # None: `store: true` is a 400

    def card(self, model: str, task: str | None = None, caller: Caller = ANYONE) -> ModelCard:
        """The model's card; 404 when there is no such model (or the caller's key may not use it: the same answer, so
        a key learns nothing of models it may not use), 400 when it does not do `task`."""
        card = self.cards.get(model) if caller.may_use(model) else None
        if card is None:
            raise APIError(
                404,
                f"The model `{model_label(model)}` does not exist. Available models: "
                f"{', '.join(m for m in self.cards if caller.may_use(m))}",
                param="model",
                code="model_not_found",
            )
        if task is not None and card.task != task:
            raise APIError(400, _wrong_task(card, task), param="model", code="model_task_mismatch")
        return card

    async def create(self, read_body: Callable[[], Awaitable[bytes]], exchange: Exchange) -> Reply:
        body = parse_chat_request(await read_body())
        store = self._storer(body, exchange) if body.store else None
        started = await self.start(body, exchange)
        params, tools = started.generation.params, started.tools
        logprobs = params.logprobs is not None
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            writer = ChunkWriter(started.ids, include_usage, logprobs)
            events = stream_events(started.items, writer, params.n, tools, store)
            return Reply(started.ids.id, events=events, release=started.release)
        completion = await collect(started.items, started.ids, params.n, logprobs, tools)
        if store is not None:
            await store(completion)
        return Reply(started.ids.id, completion=completion)

    def _storer(self, body: ChatCompletionRequest, exchange: Exchange) -> Callable[[ChatCompletion], Awaitable[None]]:
        """What keeps a `store: true` completion once it is whole (a failure to keep it is logged; the answer is
        still sent)."""
        stored = self.stored
        if stored is None:
            raise APIError(400, "this server does not store chat completions; leave out store, or set [server] "
                           "store_completions = true in the spec", param="store")  # fmt: skip
        request = body.model_dump(mode="json", exclude_none=True, by_alias=True)

        async def store(completion: ChatCompletion) -> None:
            try:
                await stored.save(exchange.caller, request, completion.model_dump(mode="json"))
            except Exception:  # a storage boundary: the client still gets its answer
                logger.exception("could not store chat completion %s", completion.id)

        return store

    async def start(self, body: ChatCompletionRequest, exchange: Exchange, id_prefix: str = "chatcmpl-") -> Started:
        """Admit a parsed chat request to its model and read the model's first item: what `create` and the Responses
        API (which speaks chat underneath) share. Raises APIError for anything wrong before the first token."""
        meter = exchange.meter
        meter.model, meter.stream = model_label(body.model), bool(body.stream)
        if body.stream_options is not None and not body.stream:
            raise APIError(400, "stream_options is only allowed with stream=true", param="stream_options")
        card = self.card(body.model, "generate", exchange.caller)
        request_id = f"{id_prefix}{uuid.uuid4().hex}"
        meter.request_id = request_id
        tools = plan_tools(body, card)
        generation = to_generation_request(body, request_id, card, tools)
        meter.choices = generation.params.n
        await self.charge(card, exchange, estimate_tokens(body.messages, generation.params, card))
        items = exchange.meter.watch(self.admit(card, exchange, generation))
        first = await first_item(items)
        ids = ResponseIds(id=request_id, created=int(time.time()), model=card.id)
        return Started(card, ids, generation, tools, chain(first, items), items.aclose)

    async def charge(self, card: ModelCard, exchange: Exchange, tokens: int) -> None:
        """Count the request against its key's limits (429 beyond one); the estimate is corrected when it ends."""
        caller = exchange.caller
        if not caller.limited or self.quotas is None or caller.key_id is None:
            return
        decision = await self.quotas.take(caller.key_id, caller.rpm, caller.tpm, tokens)
        exchange.headers.update(decision.headers)
        if not decision.allowed:
            headers = {"Retry-After": str(decision.retry_after_s), **decision.headers}
            raise APIError(429, decision.message, code="rate_limit_exceeded", headers=headers)
        quotas, key_id, tpm = self.quotas, caller.key_id, caller.tpm

        def settle(meter: Meter) -> None:
            used = (meter.prompt_tokens or 0) + sum(meter.completion_tokens.values())
            _background(quotas.settle(key_id, tpm, tokens, used))

        exchange.defer(settle)

    def enter_gate(self, card: ModelCard, exchange: Exchange) -> None:
        """Take a place in the model's gate (429 when it is full) until the exchange ends."""
        exchange.meter.model_id = card.id
        gate = self.gates[card.id]
        gate.enter()
        exchange.defer(gate.leave)

    def admit(self, card: ModelCard, exchange: Exchange, generation: GenerationRequest) -> AsyncIterator[StreamItem]:
        """Pass the model's gate (429 when it is full) and start the generation under the model's deadline."""
        self.enter_gate(card, exchange)
        return self.generate(card, generation)

    def generate(self, card: ModelCard, generation: GenerationRequest) -> AsyncIterator[StreamItem]:
        """The model's stream for one generation under the model's deadline (the caller has passed its gate)."""
        deadline = Deadline(card.limits.timeout_s, card.id)
        return deadline.bound(self.models[card.id].generate(generation))


@dataclass(frozen=True)
class Started:
    """A generation admitted and under way: its first item already read (so its status is known)."""

    card: ModelCard
    ids: ResponseIds
    generation: GenerationRequest
    tools: ToolUse | None
    items: AsyncIterator[StreamItem]  # every item, the first included
    release: Callable[[], Awaitable[None]]  # closes the model's stream (idempotent)


CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb, for a prompt the ingress cannot tokenize


def estimate_tokens(texts: Any, params: GenerationParams, card: ModelCard, prompts: int = 1) -> int:
    """What a request may use, counted against its key's tokens per minute before it runs: its text's length in
    tokens (estimated) plus the most it may generate."""
    chars = len(json.dumps(texts, default=str)) if not isinstance(texts, str) else len(texts)
    most = params.max_tokens or card.max_model_len or 4096
    return chars // CHARS_PER_TOKEN + most * params.n * prompts


_tasks: set[asyncio.Task] = set()


def _background(work: Awaitable[None]) -> None:
    """Run `work` without waiting for it (an exchange ends synchronously); keep a reference until it is done."""
    task = asyncio.ensure_future(work)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def _wrong_task(card: ModelCard, task: str) -> str:
    if card.task == "embed":
        return f"{card.id} is an embedding model: send it to /v1/embeddings, or pick a chat model"
    return f"{card.id} generates text, it makes no embeddings: send it to /v1/chat/completions or /v1/completions, or pick an embedding model"


def parse_chat_request(raw: bytes) -> ChatCompletionRequest:
    return parse_body(raw, ChatCompletionRequest, "a chat request")


Body = TypeVar("Body", bound=BaseModel)


def parse_body(raw: bytes, model: type[Body], what: str) -> Body:
    """A request body as `model`, or a 400 that says what is wrong with it."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise APIError(400, f"the request body is nested too deeply to be {what}") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, and integers past Python's digit limit
        raise APIError(400, f"the request body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    _check_unicode(data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_errors(exc.errors()) from None


def _check_unicode(data: dict[str, Any]) -> None:
    """JSON may escape half of a surrogate pair (\\ud800); such text cannot be encoded, tokenized or stored."""
    if not _encodes(data):
        param = next((k for k, v in data.items() if not _encodes(k) or not _encodes(v)), None)
        raise APIError(
            400, "the request holds text that is not valid Unicode (a lone surrogate); send UTF-8 text", param=param
        )


def _encodes(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    except RecursionError:  # JSON that json.loads just managed: deeper than any request needs
        raise APIError(400, "the request body is nested too deeply") from None
    return True


def model_list(cards: Sequence[ModelCard], created: int) -> dict[str, Any]:
    return ModelList(data=[_wire_card(card, created) for card in cards]).model_dump()


def model_object(cards: Sequence[ModelCard], model_id: str, created: int) -> dict[str, Any]:
    """GET /v1/models/{id}: the model object, or the 404 that lists the models there are."""
    for card in cards:
        if card.id == model_id:
            return _wire_card(card, created).model_dump()
    raise APIError(
        404,
        f"The model `{model_label(model_id)}` does not exist. Available models: {', '.join(c.id for c in cards)}",
        param="model",
        code="model_not_found",
    )


def _wire_card(card: ModelCard, created: int) -> WireModelCard:
    return WireModelCard(id=card.id, created=created, max_model_len=card.max_model_len)


async def health_report(models: Mapping[str, ModelClient]) -> tuple[int, dict[str, Any]]:
    """200 and every model's load when all are ready; 503 with each failing model's reason otherwise."""
    answers: list[ModelHealth] = await asyncio.gather(*(client.health() for client in models.values()))
    report = {
        name: {"status": "ready", **h.load} if h.ready else {"status": "unavailable", "reason": h.problem}
        for name, h in zip(models, answers, strict=True)
    }
    failing = {name: h.problem for name, h in zip(models, answers, strict=True) if not h.ready}
    if not failing:
        return 200, {"status": "ok", "models": report}
    error = APIError(503, "not ready: " + "; ".join(f"{k}: {v}" for k, v in failing.items()))
    return 503, {"status": "unavailable", "models": report} | error.body()


class Deadline:
    """A request's time limit over its model stream: an item that has not come by then becomes a timeout error,
    and the stream is closed, which stops the generation."""

    def __init__(self, timeout_s: float, model: str):
        self.timeout_s = timeout_s
        self.model = model
        self.at = asyncio.get_running_loop().time() + timeout_s

    async def bound(self, items: AsyncIterator[StreamItem]) -> AsyncIterator[StreamItem]:
        try:
            while True:
                try:
                    item = await _next_before(items, self.at)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    yield StreamError(
                        "timeout",
                        f"the request to {self.model} took longer than its {self.timeout_s:g} s limit; ask for fewer "
                        "tokens or raise request_timeout_s",
                    )
                    return
                yield item
        finally:
            await items.aclose()


if sys.version_info >= (3, 11):

    async def _next_before(items: AsyncIterator[StreamItem], at: float) -> StreamItem:
        async with asyncio.timeout_at(at):  # a timer per item, no extra task
            return await items.__anext__()

else:  # pragma: no cover - Python 3.10

    async def _next_before(items: AsyncIterator[StreamItem], at: float) -> StreamItem:
        timeout = at - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(items.__anext__(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError from None


async def first_item(items: AsyncIterator[StreamItem]) -> StreamItem:
    try:
        first = await items.__anext__()
    except StopAsyncIteration:
        raise APIError(500, "the model returned nothing; try again") from None
    if isinstance(first, StreamError):
        await items.aclose()
        raise APIError.from_stream_error(first)
    return first


async def chain(first: StreamItem, rest: AsyncIterator[StreamItem]) -> AsyncIterator[StreamItem]:
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        await rest.aclose()  # a client that went away stops the generation
