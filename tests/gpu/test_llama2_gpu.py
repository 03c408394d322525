"""specs/llama2.toml-style deployments on a GPU: vLLM, gpu_memory_reserved (MB), eager mode, the llama2 template.

Runs where CUDA and vllm (`pip install 'aana[vllm]'`) exist; elsewhere every test is skipped with the reason.
The tiny random Llama stands in for Llama-2 (no weights can be downloaded); the real spec runs too when
TheBloke/Llama-2-7b-Chat-AWQ is already in the Hugging Face cache.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import openai
import pytest
from e2e.server import serving

pytestmark = [pytest.mark.gpu, pytest.mark.e2e]


def _cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


if importlib.util.find_spec("vllm") is None or not _cuda():
    pytest.skip("needs a CUDA GPU and the vllm package", allow_module_level=True)

SPECS = Path(__file__).parents[2] / "specs"


def _spec(folder: Path, model: str, extra: str = "") -> Path:
    spec = folder / "llama2-style.toml"
    spec.write_text(
        f"""
name = "llama2-gpu"
[deployments.llm_deployment]
engine = "vllm"
model = "{model}"
dtype = "auto"
gpu_memory_reserved = 13000
enforce_eager = true
chat_template = "llama2"
num_gpus = 1
num_cpus = 1
{extra}
[deployments.llm_deployment.sampling]
temperature = 0.0
top_p = 1.0
top_k = -1
max_tokens = 1024
"""
    )
    return spec


def test_llama2_style_deployment_on_gpu(tmp_path, tiny_model_dir):
    with serving(_spec(tmp_path, str(tiny_model_dir), "max_model_len = 512"), tmp_path, timeout_s=600) as server:
        client = openai.OpenAI(api_key="x", base_url=server.base_url, max_retries=0, timeout=120)
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
        reply = client.chat.completions.create(model="llm_deployment", messages=messages, max_tokens=16)
        assert reply.usage.completion_tokens == 16 and reply.choices[0].finish_reason == "length"
        chunks = list(
            client.chat.completions.create(model="llm_deployment", messages=messages, max_tokens=16, stream=True)
        )
        assert (
            "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content
        )
        two = client.chat.completions.create(
            model="llm_deployment", messages=messages, max_tokens=8, n=2, temperature=1, extra_body={"ignore_eos": True}
        )
        assert [c.index for c in two.choices] == [0, 1]
        assert all(c.finish_reason == "length" for c in two.choices) and two.usage.completion_tokens == 16


def test_the_shipped_llama2_spec_when_its_weights_are_cached(tmp_path):
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache("TheBloke/Llama-2-7b-Chat-AWQ", "config.json"), str):
        pytest.skip("TheBloke/Llama-2-7b-Chat-AWQ is not in the Hugging Face cache (and cannot be downloaded here)")
    with serving(SPECS / "llama2.toml", tmp_path, timeout_s=900) as server:
        client = openai.OpenAI(api_key="x", base_url=server.base_url, max_retries=0, timeout=300)
        reply = client.chat.completions.create(
            model="llm_deployment", messages=[{"role": "user", "content": "What is the capital of France?"}]
        )
        assert "Paris" in reply.choices[0].message.content
