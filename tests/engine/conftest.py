"""Fixtures for in-process engine tests: the tiny random Llama (built once per session) and deployment plans."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

# Before anything imports huggingface_hub: these tests must never reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from runtime.plan import DeploymentPlan, ModelSource  # noqa: E402


def make_plan(source: ModelSource, **overrides) -> DeploymentPlan:
    plan = DeploymentPlan(
        model_id="tiny",
        engine="transformers",
        source=source,
        tokenizer=None,
        chat_template=None,
        num_replicas=1,
        num_cpus=1.0,
        num_gpus=0.0,
        max_ongoing_requests=16,
        max_model_len=None,
        sampling={},
        options={"dtype": "auto", "device": "auto", "threads": None},
        engine_args={},
    )
    return replace(plan, **overrides)


@pytest.fixture
def tiny_plan(tiny_model_dir: Path):
    """A function: keyword overrides -> a DeploymentPlan serving the tiny model from its folder."""
    return lambda **overrides: make_plan(ModelSource("local", str(tiny_model_dir)), **overrides)


@pytest.fixture
def plan_for():
    """A function: (ModelSource, keyword overrides) -> a DeploymentPlan for the transformers engine."""
    return make_plan
