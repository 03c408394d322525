"""Ray Serve LLM (`ray.serve.llm.build_openai_app`) as a standalone OpenAI server, for bench/serve_bench.py.

    python bench/ray_serve_llm_server.py --model-id smollm2 --model-source /path/to/folder --port 8001 \
        --engine-kwargs '{"dtype": "float32", "max_model_len": 2048, "enforce_eager": true}' \
        --env '{"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "2", "VLLM_CPU_OMP_THREADS_BIND": "0-1"}'

Starts a local Ray (no dashboard) in this process, so every Ray process it starts is this process's descendant
and its session directory ends with this process's id; deploys one model the way a Ray user would (Ray Serve
LLM's own defaults, except what is set here), serves on 127.0.0.1:PORT until SIGINT or SIGTERM, then shuts
Serve and Ray down. What is set, and why:
- `placement_group_config={"bundles": [{"CPU": 1}]}`: the default bundle asks for a GPU, which never schedules here.
- Ray starts with `--num-cpus` logical CPUs (default 4): the engine's bundle, the LLM server and the OpenAI
  ingress replicas each ask for CPU, and on a 2-CPU cluster the ingress waits forever. Logical CPUs are a
  scheduling count only; the engine's threads are bound by the vLLM CPU variables in `--env`.
- `runtime_env.env_vars` = `--env`: the vLLM CPU variables the other servers in the benchmark get.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-id", required=True, help="the OpenAI model id")
    parser.add_argument("--model-source", required=True, help="the weights folder")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--engine-kwargs", type=json.loads, default={}, help="vLLM engine arguments as JSON")
    parser.add_argument("--env", type=json.loads, default={}, help="environment of the engine as JSON")
    parser.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the local Ray")
    return parser.parse_args()


def build(args: argparse.Namespace):
    from ray.serve.llm import LLMConfig, build_openai_app

    config = LLMConfig(
        model_loading_config={"model_id": args.model_id, "model_source": args.model_source},
        engine_kwargs=args.engine_kwargs,
        placement_group_config={"bundles": [{"CPU": 1}]},
        runtime_env={"env_vars": args.env},
    )
    return build_openai_app({"llm_configs": [config]})


def main() -> None:
    args = parse()
    import ray
    from ray import serve

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    # SIGTERM and SIGINT both raise KeyboardInterrupt, during start-up or while serving, so the `finally` below stops
    # Serve and Ray. Set after ray.init, whose own SIGTERM handler exits at once and leaves Ray's agents running.
    # SIGINT explicitly too: a process started in the background by a shell inherits SIGINT ignored.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.default_int_handler)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(build(args), route_prefix="/")
        print(f"serving {args.model_id} on http://127.0.0.1:{args.port}", flush=True)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
