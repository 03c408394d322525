"""runtime.engines.vllm_args: a vLLM deployment's spec -> `AsyncEngineArgs` keyword arguments and the CPU backend's
environment. Pure: plans come from real spec text through `parse_spec` and `build_plan`; no vLLM, torch or GPU."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runtime.engines.vllm_args import (
    GIB,
    VLLMConfigError,
    cpu_env,
    engine_args,
    unknown_engine_args,
)
from runtime.plan import DeploymentPlan, build_plan
from runtime.spec import load_spec, parse_spec

REPO = Path(__file__).parents[2]


def vllm_plan(body: str = "", model: str = "org/model") -> DeploymentPlan:
    """The plan of a one-deployment vLLM spec named `llm` whose table holds `body`."""
    text = f'name = "demo"\n[deployments.llm]\nengine = "vllm"\nmodel = "{model}"\n' + textwrap.dedent(body)
    [dep] = build_plan(parse_spec(text, environ={})).deployments
    return dep


# ---------------------------------------------------------------------------------------------------------------
# engine_args


def test_the_shipped_llama2_spec_becomes_these_engine_arguments():
    [dep] = build_plan(load_spec(REPO / "specs" / "llama2.toml"), base_dir=REPO / "specs").deployments
    args = engine_args(dep, "TheBloke/Llama-2-7b-Chat-AWQ", None, gpu_total_mb=24000)
    assert args == {
        "model": "TheBloke/Llama-2-7b-Chat-AWQ",
        "tokenizer": None,
        "revision": None,
        "dtype": "auto",
        "quantization": "awq",
        "max_model_len": dep.max_model_len,
        "enforce_eager": True,
        "tensor_parallel_size": 1,
        "gpu_memory_utilization": 0.5417,  # 13000 MB of 24000
    }


def test_dedicated_keys_are_translated():
    dep = vllm_plan(
        """
        revision = "v2"
        dtype = "bfloat16"
        max_model_len = 2048
        enforce_eager = true
        tensor_parallel_size = 2
        gpu_memory_utilization = 0.8
        """
    )
    args = engine_args(dep, "org/model", "org/tokenizer", gpu_total_mb=81559)
    assert args == {
        "model": "org/model",
        "tokenizer": "org/tokenizer",
        "revision": "v2",
        "dtype": "bfloat16",
        "quantization": None,
        "max_model_len": 2048,
        "enforce_eager": True,
        "tensor_parallel_size": 2,
        "gpu_memory_utilization": 0.8,
    }


def test_defaults_leave_vllm_its_own():
    args = engine_args(vllm_plan(), "org/model", None, gpu_total_mb=24000)
    assert args["dtype"] == "auto" and args["max_model_len"] is None and args["quantization"] is None
    assert "gpu_memory_utilization" not in args  # vLLM's default (0.9)
    assert (args["enforce_eager"], args["tensor_parallel_size"]) == (False, 1)


def test_auto_dtype_is_float32_on_cpu_and_an_explicit_one_is_kept():
    assert engine_args(vllm_plan(), "m", None, gpu_total_mb=None)["dtype"] == "float32"
    assert engine_args(vllm_plan('dtype = "bfloat16"\n'), "m", None, gpu_total_mb=None)["dtype"] == "bfloat16"


def test_enforce_eager_left_to_the_engine_is_eager_on_cpu_only():
    undecided = vllm_plan()
    assert undecided.options.enforce_eager is None  # the spec's default
    assert engine_args(undecided, "m", None, gpu_total_mb=None)["enforce_eager"] is True
    assert engine_args(undecided, "m", None, gpu_total_mb=24000)["enforce_eager"] is False
    compiled = vllm_plan("enforce_eager = false\n")
    assert engine_args(compiled, "m", None, gpu_total_mb=None)["enforce_eager"] is False  # the spec's explicit value


def test_revision_is_dropped_for_a_local_folder_as_resolve_weights_does(tmp_path):
    dep = vllm_plan('revision = "v2"\n', model=str(tmp_path))
    assert dep.source.kind == "local"
    assert engine_args(dep, str(tmp_path), None, None)["revision"] is None


@pytest.mark.parametrize(
    ("reserved", "total", "fraction"),
    [(13000, 24000, 0.5417), (13000, 81559, 0.1594), (24000, 24000, 1.0), (12000.5, 24001, 0.5)],
)
def test_gpu_memory_reserved_is_a_fraction_of_the_replicas_gpu(reserved, total, fraction):
    dep = vllm_plan(f"num_gpus = 1\ngpu_memory_reserved = {reserved}\n")
    assert engine_args(dep, "m", None, gpu_total_mb=total)["gpu_memory_utilization"] == fraction


def test_gpu_memory_reserved_beyond_the_gpu_names_both_numbers_and_the_fix():
    dep = vllm_plan("num_gpus = 1\ngpu_memory_reserved = 30000\n")
    with pytest.raises(VLLMConfigError) as caught:
        engine_args(dep, "m", None, gpu_total_mb=24000)
    message = str(caught.value)
    assert "deployments.llm.gpu_memory_reserved = 30000 MB" in message
    assert "24000 MB of the GPU" in message
    assert "lower it to at most 24000" in message and "gpu_memory_utilization" in message
    assert isinstance(caught.value, ValueError)


def test_gpu_memory_reserved_without_a_gpu_is_an_error_not_ignored():
    dep = vllm_plan("gpu_memory_reserved = 13000\n")
    with pytest.raises(VLLMConfigError, match=r"no GPU \(num_gpus = 0\); set num_gpus"):
        engine_args(dep, "m", None, gpu_total_mb=None)


def test_gpu_memory_utilization_passes_through_on_cpu_too():
    # On the CPU backend vLLM reads it as a fraction of host memory when no KV cache size is set.
    args = engine_args(vllm_plan("gpu_memory_utilization = 0.3\n"), "m", None, gpu_total_mb=None)
    assert args["gpu_memory_utilization"] == 0.3


def test_pass_through_arguments_are_added_untouched():
    dep = vllm_plan("engine_args = { max_num_seqs = 8, trust_remote_code = true, hf_overrides = { a = 1 } }\n")
    args = engine_args(dep, "m", None, None)
    assert (args["max_num_seqs"], args["trust_remote_code"], args["hf_overrides"]) == (8, True, {"a": 1})


def test_pass_through_keys_that_a_spec_key_sets_are_refused_naming_both():
    dep = vllm_plan('engine_args = { dtype = "float16", gpu_memory_utilization = 0.5, max_num_seqs = 8 }\n')
    with pytest.raises(VLLMConfigError) as caught:
        engine_args(dep, "m", None, 24000)
    message = str(caught.value)
    assert "deployments.llm.engine_args.dtype sets what the spec key `dtype` sets" in message
    assert "remove engine_args.dtype and use `dtype` instead" in message
    assert "engine_args.gpu_memory_utilization" in message
    assert "`gpu_memory_utilization or gpu_memory_reserved`" in message
    assert "max_num_seqs" not in message


@pytest.mark.parametrize("key", ["model", "tokenizer", "revision", "quantization", "max_model_len", "enforce_eager",
                                 "tensor_parallel_size"])  # fmt: skip
def test_every_dedicated_key_collides(key):
    dep = vllm_plan(f"engine_args = {{ {key} = 1 }}\n")
    with pytest.raises(VLLMConfigError, match=f"engine_args.{key} sets what the spec key `{key}` sets"):
        engine_args(dep, "m", None, None)


def test_kv_cache_memory_bytes_may_pass_through_unless_kv_cache_space_gb_is_set():
    assert (
        engine_args(vllm_plan("engine_args = { kv_cache_memory_bytes = 1000 }\n"), "m", None, None)[
            "kv_cache_memory_bytes"
        ]
        == 1000
    )
    dep = vllm_plan("kv_cache_space_gb = 2\nengine_args = { kv_cache_memory_bytes = 1000 }\n")
    with pytest.raises(VLLMConfigError, match="spec key `kv_cache_space_gb`"):
        engine_args(dep, "m", None, None)


def test_a_fractional_kv_cache_goes_through_the_engine_argument_on_cpu_only():
    dep = vllm_plan("kv_cache_space_gb = 0.5\n")
    assert engine_args(dep, "m", None, None)["kv_cache_memory_bytes"] == GIB // 2
    assert "kv_cache_memory_bytes" not in engine_args(dep, "m", None, 24000)
    assert "kv_cache_memory_bytes" not in engine_args(vllm_plan("kv_cache_space_gb = 2\n"), "m", None, None)


# ---------------------------------------------------------------------------------------------------------------
# unknown_engine_args

VALID = ["max_num_seqs", "max_num_batched_tokens", "trust_remote_code", "swap_space", "seed"]


def test_unknown_pass_through_names_get_the_nearest_valid_names():
    messages = unknown_engine_args(["max_num_seq", "trust_remote_code", "trust_remote"], VALID)
    assert messages == [
        "engine_args.max_num_seq is not a vLLM engine argument; did you mean 'max_num_seqs'?",
        "engine_args.trust_remote is not a vLLM engine argument; did you mean 'trust_remote_code'?",
    ]


def test_an_unknown_name_with_nothing_close_says_where_to_look():
    assert unknown_engine_args(["colour"], VALID) == [
        "engine_args.colour is not a vLLM engine argument; check vLLM's engine arguments"
    ]


def test_known_names_give_no_messages():
    assert unknown_engine_args(VALID, VALID) == []
    assert unknown_engine_args([], VALID) == []


def test_several_suggestions_when_several_are_close():
    [message] = unknown_engine_args(["max_num"], ["max_num_seqs", "max_num_tokens", "seed"])
    assert "did you mean 'max_num_seqs' or 'max_num_tokens'?" in message


# ---------------------------------------------------------------------------------------------------------------
# cpu_env


def test_cpu_env_binds_every_core_and_sizes_the_kv_cache_one_gib_by_default():
    assert cpu_env(vllm_plan(), 2) == {
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "0-1",
        "OMP_NUM_THREADS": "2",
    }


def test_cpu_env_kv_cache_from_the_spec():
    assert cpu_env(vllm_plan("kv_cache_space_gb = 4\n"), 1)["VLLM_CPU_KVCACHE_SPACE"] == "4"


def test_cpu_env_leaves_the_whole_gib_variable_out_when_bytes_decide():
    assert "VLLM_CPU_KVCACHE_SPACE" not in cpu_env(vllm_plan("kv_cache_space_gb = 0.5\n"), 2)
    assert "VLLM_CPU_KVCACHE_SPACE" not in cpu_env(vllm_plan("engine_args = { kv_cache_memory_bytes = 1 }\n"), 2)


def test_cpu_env_binds_the_cores_the_process_may_use():
    env = cpu_env(vllm_plan(), 3, cores=[2, 3, 4, 7])
    assert (env["VLLM_CPU_OMP_THREADS_BIND"], env["OMP_NUM_THREADS"]) == ("2-4", "3")
    assert cpu_env(vllm_plan(), 4, cores=[0, 2, 3, 5])["VLLM_CPU_OMP_THREADS_BIND"] == "0,2-3,5"


def test_cpu_env_splits_the_cores_between_tensor_parallel_ranks():
    env = cpu_env(vllm_plan("tensor_parallel_size = 2\n"), 5)
    assert (env["VLLM_CPU_OMP_THREADS_BIND"], env["OMP_NUM_THREADS"]) == ("0-1|2-3", "2")


def test_cpu_env_refuses_more_ranks_than_cores():
    with pytest.raises(VLLMConfigError, match="tensor_parallel_size = 4 needs at least 4 CPU cores"):
        cpu_env(vllm_plan("tensor_parallel_size = 4\n"), 2)


# ---------------------------------------------------------------------------------------------------------------
# Dependency directions


def test_neither_module_imports_vllm_or_torch_on_import():
    code = (
        "import sys, runtime.engines.vllm_args, runtime.engines.vllm\n"
        "print(sorted(m for m in ('vllm', 'torch', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
