"""The model alone, no server: `model.generate` on a static batch of 1 and of c prompts, to show how far batching
can scale on this machine at all (the ceiling for the Transformers engine's c=1 -> c=8 scaling).

    python bench/model_scaling.py --spec specs/smollm2.toml --model smollm2 [--concurrency 1 8] [--max-tokens 64]

Loads the deployment's weights as the engine does (the folder `aana up` resolves, float32 on CPU) with the engine's
default thread count (the deployment's num_cpus, or its `threads`), greedy, exactly --max-tokens new tokens per
prompt. Prints one line per batch size: tok/s, median [min-max] of --repeat runs, and the scaling against the first.
serve_bench.py --mode transformers runs it after the server rounds, in its own process, so one run shows both.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runtime.engines.transformers import torch_threads
    from runtime.plan import load_plan
    from runtime.weights import resolve_weights

    plan = next(d for d in load_plan(args.spec).deployments if d.model_id == args.model)
    threads = torch_threads(plan)
    torch.set_num_threads(threads)
    resolved = resolve_weights(plan.source, plan.tokenizer)
    tokenizer = AutoTokenizer.from_pretrained(resolved.tokenizer_source)
    model = AutoModelForCausalLM.from_pretrained(resolved.path_or_id, dtype=torch.float32).eval()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Tell me a story."}], add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )  # fmt: skip
    rates: dict[int, list[float]] = {}
    with torch.no_grad():
        model.generate(**prompt, max_new_tokens=4, do_sample=False)  # warm-up
        for c in args.concurrency:
            batch = {k: v.repeat(c, 1) for k, v in prompt.items()}
            for _ in range(args.repeat):
                started = time.perf_counter()
                model.generate(**batch, max_new_tokens=args.max_tokens, min_new_tokens=args.max_tokens,
                               do_sample=False, pad_token_id=tokenizer.eos_token_id)  # fmt: skip
                rates.setdefault(c, []).append(c * args.max_tokens / (time.perf_counter() - started))
    base = statistics.median(rates[args.concurrency[0]])
    for c, values in rates.items():
        print(f"model alone, batch {c}: {statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}] tok/s, "
              f"scaling {statistics.median(values) / base:.2f}x ({threads} torch thread(s), plain generate)")  # fmt: skip


if __name__ == "__main__":
    main()
