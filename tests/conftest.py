"""Shared test settings: no network for model weights, the tiny model on the import path, and a tier per folder.

Every test carries the marker of its folder (tests/unit -> `unit`, ..., tests/gpu -> `gpu`; pyproject says what
each tier needs). The quick tier, for every change: `pytest -m unit` (no Ray start, no PostgreSQL, no vLLM; under a
minute). Explicit marks stay: a SmolLM2 test under tests/engine is `engine` and `e2e`.
"""

import os
import sys
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Every `aana` the tests start records into a throwaway database and state folder, never the user's own.
_SCRATCH = tempfile.mkdtemp(prefix="aana-tests-")
os.environ["AANA_DATABASE_URL"] = f"sqlite:///{_SCRATCH}/aana.db"
os.environ["AANA_STATE_DIR"] = f"{_SCRATCH}/state"
sys.path.insert(0, str(Path(__file__).parent))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama saved with save_pretrained, built once per test session (~5 s)."""
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


TIERS = ("unit", "engine", "store", "e2e", "gpu")


def pytest_collection_modifyitems(config, items):
    root = Path(__file__).parent
    for item in items:
        folder = item.path.relative_to(root).parts[0] if item.path.is_relative_to(root) else None
        if folder in TIERS:
            item.add_marker(folder)
