"""Shared test settings: no network for model weights, and the tiny model on the import path."""

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
