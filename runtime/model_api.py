"""What crosses the boundary between the HTTP ingress and a model replica, and nothing else.

The ingress talks to every model through `ModelClient`: a Ray Serve handle adapter in production
(`runtime.app.RemoteModel`), the replica class itself in tests (`runtime.model_server.ModelServer`). Stream items
are the engine's typed deltas or an in-band `StreamError`, so a failure crosses a process boundary as data, never
as a pickled exception. A `ModelCard` is all the ingress knows of a model. Imports neither FastAPI nor Ray.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from runtime.engines.base import Delta, EmbeddingRequest, EmbeddingResult, GenerationRequest, StreamError

StreamItem = Delta | StreamError


@dataclass(frozen=True)
class ModelHealth:
    """One model as a health probe sees it: ready (problem None) with its load, or the reason it is not."""

    problem: str | None = None
    load: dict[str, int] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.problem is None


@dataclass(frozen=True)
class RequestLimits:
    """What one model admits: how many requests at once (running + queued, over its replicas), for how long, and
    how much work one request may ask for."""

    capacity: int = 96
    timeout_s: float = 600.0
    max_tokens_per_request: int = 16384
    max_logprobs_per_request: int = 65536


@dataclass(frozen=True)
class ModelCard:
    """What the ingress needs of one model: its id, its engine, the request fields it honours, and its defaults."""

    id: str  # the OpenAI `model` name and the Ray Serve deployment name
    engine: str
    max_model_len: int | None
    supports: frozenset[str]  # request fields the engine can honour beyond the basic ones
    sampling: Mapping[str, Any]  # the spec's sampling defaults, only those set
    limits: RequestLimits = field(default_factory=RequestLimits)
    tool_parser: str | None = None  # how tool calls are read from the model's text (tool_choice "auto")
    task: str = "generate"  # "generate" (chat and completions) or "embed" (embeddings)


class ModelClient(Protocol):
    """One model, as the ingress calls it."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        """The model's items for one request; closing the iterator early must stop the generation."""

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult | StreamError:
        """The request's vectors, or why not (a failure as data, as in a stream)."""

    async def health(self) -> ModelHealth:
        """Whether the model can serve now, and its load."""
