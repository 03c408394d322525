"""Fixtures for in-process engine tests: the tiny random Llama (built once per session) and deployment plans."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Before anything imports huggingface_hub: these tests must never reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from engine.helpers import make_plan

from runtime.plan import ModelSource


@pytest.fixture
def tiny_plan(tiny_model_dir: Path):
    """A function: keyword overrides -> a DeploymentPlan serving the tiny model from its folder."""
    return lambda **overrides: make_plan(ModelSource("local", str(tiny_model_dir)), **overrides)


@pytest.fixture
def plan_for():
    """A function: (ModelSource, keyword overrides) -> a DeploymentPlan for the transformers engine."""
    return make_plan
