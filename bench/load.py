"""A small OpenAI chat-completions load generator: TTFT and output tokens/s at a given concurrency.

Streams every request with `stream_options.include_usage`, so output tokens are the server's own count, and TTFT is
the time to the first chunk that carries content. Only talks to loopback servers. Prints nothing: callers report.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass

import httpx

PROMPTS = [
    "Write a short story about a dragon who learns to bake bread.",
    "Explain how a bicycle works to a ten year old.",
    "List ten facts about the moon, one per line.",
    "Describe a walk through a forest in autumn.",
    "What makes a good cup of tea? Answer in detail.",
    "Tell me about the history of the printing press.",
    "Write a poem about the sea and the stars.",
    "How do trains stay on their tracks?",
]


@dataclass(frozen=True)
class RequestResult:
    ttft_s: float
    total_s: float
    output_tokens: int


@dataclass(frozen=True)
class RunResult:
    concurrency: int
    requests: list[RequestResult]
    wall_s: float

    @property
    def output_tok_s(self) -> float:
        return sum(r.output_tokens for r in self.requests) / self.wall_s

    @property
    def ttft_median_s(self) -> float:
        return statistics.median(r.ttft_s for r in self.requests)


async def one_request(client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int) -> RequestResult:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        # Both servers must generate exactly max_tokens, so EOS must not end a request early.
        "ignore_eos": True,
    }
    started = time.perf_counter()
    ttft = None
    tokens = 0
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {response.status_code}: {(await response.aread()).decode()[:300]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"{url}: stream error: {chunk['error']}")
            if ttft is None and any(c["delta"].get("content") for c in chunk.get("choices", [])):
                ttft = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    total = time.perf_counter() - started
    return RequestResult(ttft if ttft is not None else total, total, tokens)


async def run_load(base_url: str, model: str, concurrency: int, requests: int, max_tokens: int) -> RunResult:
    url = base_url.rstrip("/") + "/v1/chat/completions"
    queue: asyncio.Queue[str] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(PROMPTS[i % len(PROMPTS)])
    results: list[RequestResult] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            prompt = queue.get_nowait()
            results.append(await one_request(client, url, model, prompt, max_tokens))

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return RunResult(concurrency, results, wall)


async def wait_ready(base_url: str, timeout_s: float, model: str | None = None) -> None:
    """Until GET /v1/models answers 200 and, with `model`, a one-token chat completion does too.

    /v1/models alone is not enough for every server: Ray Serve LLM's ingress lists its models from the config while
    the engine is still loading, and a request sent then waits for it.
    """
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                listed = (await client.get(base_url.rstrip("/") + "/v1/models")).status_code == 200
                if listed and (model is None or await _answers(client, base_url, model, deadline - time.monotonic())):
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(1)
    raise TimeoutError(f"{base_url} did not answer within {timeout_s:.0f} s")


async def _answers(client: httpx.AsyncClient, base_url: str, model: str, timeout_s: float) -> bool:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    url = base_url.rstrip("/") + "/v1/chat/completions"
    return (await client.post(url, json=body, timeout=max(timeout_s, 1))).status_code == 200
