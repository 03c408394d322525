"""A 10x-capacity burst against aana on the echo engine: how fast refusals come, what the admitted requests get
done, and how long GET /health takes meanwhile, against an unloaded run in the same process.

    python bench/overload.py --rounds 3

Starts `aana up` on a generated echo spec (capacity = max_ongoing_requests + max_queued_requests, one replica;
each request streams --words words with --token-delay seconds between them). Each round runs an unloaded batch
(exactly `capacity` requests at once) and a burst (10 x capacity at once) while probing /health every 50 ms.
Prints medians with the [min-max] spread over rounds; never passes or fails. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from load import wait_ready
from serve_bench import free_port, start, stop

SPEC = """name = "overload"
[deployments.echo]
engine = "echo"
num_cpus = 0.2
token_delay_s = {delay}
max_ongoing_requests = {ongoing}
max_queued_requests = {queued}
"""


@dataclass
class Round:
    unloaded_tok_s: float = 0.0
    burst_tok_s: float = 0.0
    admitted: int = 0
    refused: int = 0
    other: int = 0
    refusal_ms: list[float] = field(default_factory=list)
    health_ms: list[float] = field(default_factory=list)
    health_not_ok: int = 0


async def _chat(client: httpx.AsyncClient, words: str) -> tuple[int, float, int]:
    started = time.perf_counter()
    body = {"model": "echo", "messages": [{"role": "user", "content": words}]}
    response = await client.post("/v1/chat/completions", json=body)
    tokens = response.json()["usage"]["completion_tokens"] if response.status_code == 200 else 0
    return response.status_code, (time.perf_counter() - started) * 1000, tokens


async def _batch(base_url: str, n: int, words: str, result: Round | None) -> float:
    """n requests at once; the admitted requests' tokens per second of wall time (probing /health into `result`)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=httpx.Limits(max_connections=n + 2)) as client:
        started = time.perf_counter()
        tasks = [asyncio.create_task(_chat(client, words)) for _ in range(n)]
        while result is not None and not all(t.done() for t in tasks):
            probe_started = time.perf_counter()
            health = await client.get("/health")
            result.health_ms.append((time.perf_counter() - probe_started) * 1000)
            result.health_not_ok += health.status_code != 200
            await asyncio.sleep(0.05)
        answers = await asyncio.gather(*tasks)
        wall = time.perf_counter() - started
    if result is not None:
        for status, ms, _ in answers:
            if status == 200:
                result.admitted += 1
            elif status == 429:
                result.refused += 1
                result.refusal_ms.append(ms)
            else:
                result.other += 1
    return sum(tokens for _, _, tokens in answers) / wall


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def _cell(values: list[float], digits: int = 1) -> str:
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ongoing", type=int, default=4, help="max_ongoing_requests")
    parser.add_argument("--queued", type=int, default=4, help="max_queued_requests")
    parser.add_argument("--words", type=int, default=40, help="words per answer (one token each)")
    parser.add_argument("--token-delay", type=float, default=0.05)
    args = parser.parse_args()
    capacity = args.ongoing + args.queued
    words = " ".join(f"w{i}" for i in range(args.words))
    folder = Path(tempfile.mkdtemp(prefix="aana-overload-"))
    spec = folder / "overload.toml"
    spec.write_text(SPEC.format(delay=args.token_delay, ongoing=args.ongoing, queued=args.queued))
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    aana = Path(sys.executable).parent / "aana"
    env = {"AANA_DATABASE_URL": f"sqlite:///{folder}/aana.db", "AANA_STATE_DIR": str(folder / "state")}
    process = start(
        [str(aana), "up", str(spec), "--port", str(port), "--migrate"], folder / "aana.log", os.environ | env
    )
    rounds: list[Round] = []
    try:
        asyncio.run(wait_ready(base_url, 300))
        asyncio.run(_batch(base_url, capacity, words, None))  # warm-up
        for i in range(args.rounds):
            result = Round()
            result.unloaded_tok_s = asyncio.run(_batch(base_url, args.ongoing, words, None))
            result.burst_tok_s = asyncio.run(_batch(base_url, 10 * capacity, words, result))
            rounds.append(result)
            print(f"  round {i + 1}: {result.admitted} admitted, {result.refused} refused", file=sys.stderr)
    finally:
        stop(process)
    print(f"aana overload: echo, capacity {capacity} ({args.ongoing} running + {args.queued} queued), burst of "
          f"{10 * capacity}, {args.words} tokens x {args.token_delay:g} s; median [min-max] over {args.rounds} rounds")  # fmt: skip
    print(f"admitted / refused (429) / other: {[r.admitted for r in rounds]} / {[r.refused for r in rounds]} / "
          f"{[r.other for r in rounds]}")  # fmt: skip
    print(f"429 latency p50 ms: {_cell([_pct(r.refusal_ms, 0.5) for r in rounds])}")
    print(f"429 latency p99 ms: {_cell([_pct(r.refusal_ms, 0.99) for r in rounds])}")
    print(f"goodput tok/s unloaded ({args.ongoing} at once): {_cell([r.unloaded_tok_s for r in rounds])}")
    print(f"goodput tok/s during the burst (admitted only): {_cell([r.burst_tok_s for r in rounds])}")
    ratio = [r.burst_tok_s / r.unloaded_tok_s for r in rounds]
    print(f"goodput ratio burst / unloaded: {_cell(ratio, 2)}")
    print(f"/health ms p50: {_cell([_pct(r.health_ms, 0.5) for r in rounds])}, "
          f"p99: {_cell([_pct(r.health_ms, 0.99) for r in rounds])}, max: {_cell([max(r.health_ms) for r in rounds])}; "
          f"not 200: {sum(r.health_not_ok for r in rounds)}")  # fmt: skip


if __name__ == "__main__":
    main()
