"""The sentence-transformers engine: one `SentenceTransformer` per replica turns texts and token ids into vectors.

Owns loading the model (through `runtime.weights`, zipped model folders included), checking each request (empty or
too long inputs, token ids outside the vocabulary, a `dimensions` the model cannot give) and gathering concurrent
requests into forward passes. Texts are tokenized with the model's own tokenizer, special tokens included as
sentence-transformers does, and never truncated: an input longer than max_model_len is the client's error. Texts and
token ids then take one path, padded input_ids and attention_mask through the model's modules (transformer, pooling,
normalize), so a text and its token ids give the same vector.

Batching (`runtime.engines.batcher`): one forward pass at a time, in one thread that holds torch's thread count.
While a pass runs, new requests queue; the next pass takes the queued inputs up to `max_batch_size`, across requests
(each request's own inputs sorted by length, so the passes of a large request pad little). No timer: a lone request
runs at once. A request is checked before it joins the queue, so a bad input fails its own request only.

torch and sentence_transformers are imported inside functions, when start() runs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.engines.base import EmbeddingRequest, EmbeddingResult, Engine, EngineError, check_token_ids
from runtime.engines.batcher import Batcher
from runtime.engines.transformers import pick_device, torch_threads
from runtime.weights import offline_hint, pending_extraction, resolve_weights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Loaded:
    model: Any
    tokenizer: Any
    device: str
    max_model_len: int
    dimensions: int  # the model's own vector size
    normalizes: bool  # the pipeline ends in unit vectors (a Normalize module)
    vocab_size: int
    pad_id: int
    pad_left: bool


@dataclass(frozen=True)
class _Input:
    """One input as a forward pass takes it: its token ids, and the vector its request wants."""

    ids: list[int]
    dimensions: int
    renormalize: bool  # cut from a unit vector: scale back to unit length


class SentenceTransformersEngine(Engine):
    """Serves one embedding model, batching concurrent requests (see the module docstring)."""

    def __init__(self, config: Any):
        super().__init__(config)
        self._loaded: _Loaded | None = None
        self._batcher: Batcher | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        # One thread loads the model and runs every pass: torch's thread count is set there once, and the replica's
        # event loop keeps answering Ray meanwhile.
        self._executor = ThreadPoolExecutor(1, "aana-embed", _set_torch_threads, (torch_threads(self.config),))
        self.step("importing torch and sentence-transformers")
        try:
            self._loaded = await asyncio.get_running_loop().run_in_executor(self._executor, self._load)
        except BaseException:
            self._executor.shutdown(wait=False)  # a replica that failed to start holds no thread
            raise
        encode = functools.partial(_encode, self._loaded)
        self._batcher = Batcher(encode, self.config.options.max_batch_size, self._executor)
        self.step("warming up (one input through the model)")
        await self.embed(EmbeddingRequest("warm-up", ("Hello",)))

    def _load(self) -> _Loaded:
        from sentence_transformers import SentenceTransformer

        config = self.config
        if config.tokenizer is not None:
            raise RuntimeError(
                f"the sentence_transformers engine uses the tokenizer saved with the model; remove `tokenizer` from "
                f"deployment {config.model_id!r} in the spec"
            )
        device = pick_device(config.options.device, config.num_gpus)
        if archive := pending_extraction(config.source):
            self.step(f"extracting {archive.name} (once)")
        resolved = resolve_weights(config.source)
        folder = Path(resolved.path_or_id)
        if config.source.kind != "hub" and not (folder / "modules.json").is_file():
            raise RuntimeError(
                f"{config.source.describe()} is not a sentence-transformers model (no modules.json in {folder}); "
                "point `model` at a folder written by SentenceTransformer.save() or a .zip of one, or serve a "
                'text-generation model with engine = "transformers"'
            )
        self.step(f"loading the weights{_weights_size(folder)} on {device}")
        try:
            model = SentenceTransformer(resolved.path_or_id, device=device, revision=resolved.revision,
                                        **config.engine_args)  # fmt: skip
        except OSError as exc:
            raise RuntimeError(
                f"cannot load the sentence-transformers model {resolved.path_or_id!r}: {exc}"
                f"{offline_hint(resolved.path_or_id)}"
            ) from exc
        model.eval()
        loaded = _inspect(model, device, config)
        log.info("%s loaded on %s: %d dimensions, max_model_len=%d", config.model_id, device, loaded.dimensions,
                 loaded.max_model_len)  # fmt: skip
        return loaded

    async def check_health(self) -> None:
        if self._loaded is None or self._batcher is None:
            raise RuntimeError("the model is not loaded (start() has not finished or failed)")
        if failure := self._batcher.failure():
            raise RuntimeError(f"the embedding worker has stopped: {failure}")

    async def shutdown(self) -> None:
        self._closing = True
        if self._batcher is not None:
            await self._batcher.stop(self._unavailable())
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown)  # lets a pass still running end
        loaded, self._loaded = self._loaded, None
        if loaded is not None and loaded.device.startswith("cuda"):
            import torch

            del loaded
            torch.cuda.empty_cache()

    @property
    def max_model_len(self) -> int | None:
        return self._loaded.max_model_len if self._loaded else None

    @property
    def forward_passes(self) -> int:
        """Forward passes run so far (the warm-up's included): what batching saves is visible here."""
        return self._batcher.passes if self._batcher else 0

    def load(self) -> dict[str, int]:
        if self._batcher is None:
            return {}
        return {"running": self._batcher.running, "waiting": self._batcher.waiting}

    # -- embedding -------------------------------------------------------------------------------------------

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        loaded, batcher = self._ready()
        dimensions = self._dimensions(loaded, request.dimensions)
        ids = _input_ids(loaded, request.inputs)
        renormalize = loaded.normalizes and dimensions < loaded.dimensions
        inputs = [_Input(one, dimensions, renormalize) for one in ids]
        vectors = await batcher.submit(inputs, key=lambda one: len(one.ids))
        return EmbeddingResult(tuple(vectors), sum(len(one) for one in ids))

    def _dimensions(self, loaded: _Loaded, asked: int | None) -> int:
        """The vector size to return: the model's own, or one of the spec's `matryoshka_dimensions`."""
        allowed = self.config.options.matryoshka_dimensions or []
        if asked is None or asked == loaded.dimensions:
            return loaded.dimensions
        if asked in allowed:
            return asked
        model = self.config.model_id
        if allowed:
            sizes = ", ".join(str(size) for size in sorted({loaded.dimensions, *allowed}))
            message = (
                f"dimensions = {asked} is not a size model {model} gives; use one of {sizes} (the sizes the spec key "
                "`matryoshka_dimensions` lists for it), or leave `dimensions` out"
            )
        else:
            message = (
                f"model {model} gives {loaded.dimensions}-dimensional vectors only, not {asked}; leave `dimensions` "
                "out (the spec key `matryoshka_dimensions` lists the sizes a Matryoshka model may be cut to)"
            )
        raise EngineError("invalid_request", message, "dimensions")

    def _ready(self) -> tuple[_Loaded, Batcher]:
        if self._closing:
            raise self._unavailable()
        if self._loaded is None or self._batcher is None:
            raise EngineError("unavailable", "the model is still loading; retry shortly")
        if self._batcher.failure():
            raise self._unavailable()
        return self._loaded, self._batcher

    def _unavailable(self) -> EngineError:
        if self._closing:
            return EngineError("unavailable", "this replica is shutting down; retry")
        return EngineError("unavailable", "this replica's model is unusable; it is being replaced")


# -- the model ---------------------------------------------------------------------------------------------


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _inspect(model: Any, device: str, config: Any) -> _Loaded:
    """What serving needs to know of a loaded model, checked against the spec."""
    from sentence_transformers.sentence_transformer.modules import Normalize, Transformer

    first = model[0]
    if not isinstance(first, Transformer) or "text" not in first.modality_config:
        raise RuntimeError(
            f"{config.source.describe()} does not start with a text transformer module; this engine serves text "
            "embedding models"
        )
    positions = getattr(first.config.get_text_config(), "max_position_embeddings", None)
    if config.max_model_len and positions and config.max_model_len > positions:
        raise RuntimeError(
            f"max_model_len = {config.max_model_len} is more than {config.source.describe()} can take "
            f"({positions} positions); set `max_model_len` to at most {positions} for deployment "
            f"{config.model_id!r} in the spec"
        )
    max_model_len = config.max_model_len or model.max_seq_length or positions
    dimensions = model.get_embedding_dimension()
    if not max_model_len or not dimensions:
        raise RuntimeError(
            f"cannot tell the input length or the vector size of {config.source.describe()}; set `max_model_len`"
            " in the spec, or check that the model folder is complete"
        )
    if bad := [size for size in config.options.matryoshka_dimensions or [] if not 0 < size <= dimensions]:
        raise RuntimeError(
            f"matryoshka_dimensions {bad} of deployment {config.model_id!r}: this model's vectors have {dimensions} "
            "dimensions; list sizes from 1 to that"
        )
    tokenizer = first.tokenizer
    return _Loaded(
        model, tokenizer, device, max_model_len, dimensions, normalizes=any(isinstance(m, Normalize) for m in model),
        vocab_size=len(tokenizer), pad_id=tokenizer.pad_token_id or 0, pad_left=tokenizer.padding_side == "left",
    )  # fmt: skip


def _input_ids(loaded: _Loaded, inputs: Sequence[str | Sequence[int]]) -> list[list[int]]:
    """Each input's token ids (texts tokenized with special tokens, ids as sent), checked; never truncated."""
    if not inputs:
        raise EngineError("invalid_request", "input is empty; send a text or a list of token ids", "input")
    texts = [(index, text) for index, text in enumerate(inputs) if isinstance(text, str)]
    for index, text in texts:
        if not text:
            raise EngineError("invalid_request", f"input[{index}] is an empty string; send text to embed", "input")
    ids: list[list[int]] = [list(one) if not isinstance(one, str) else [] for one in inputs]
    if texts:
        encoded = loaded.tokenizer([text for _, text in texts], add_special_tokens=True, verbose=False)
        for (index, _), one in zip(texts, encoded["input_ids"], strict=True):
            ids[index] = list(one)
    for index, one in enumerate(inputs):
        if not isinstance(one, str):
            try:
                check_token_ids(ids[index], loaded.vocab_size, f"input[{index}]")
            except EngineError as exc:  # named by position in the message; the OpenAI param is "input"
                raise EngineError(exc.kind, exc.message, "input") from None
    for index, one in enumerate(ids):
        if len(one) > loaded.max_model_len:
            raise EngineError(
                "context_length",
                f"This model's maximum context length is {loaded.max_model_len} tokens. However, input[{index}] has "
                f"{len(one)} tokens. Please reduce the length of the input.",
                "input",
            )
    return ids


def _encode(loaded: _Loaded, inputs: list[_Input]) -> list[bytes]:
    """One forward pass over `inputs`, padded to the longest; each vector cut to its request's size, as
    little-endian float32 bytes. Runs in the engine's thread."""
    import torch

    with torch.inference_mode():
        embeddings = loaded.model.forward(_features(loaded, [one.ids for one in inputs]))["sentence_embedding"]
    rows = embeddings.float().cpu().numpy()
    vectors = []
    for row, one in zip(rows, inputs, strict=True):
        vector = row[: one.dimensions]
        if one.renormalize:
            vector = vector / max(float(vector @ vector) ** 0.5, 1e-12)
        vectors.append(vector.astype("<f4").tobytes())
    return vectors


def _features(loaded: _Loaded, batch: list[list[int]]) -> dict[str, Any]:
    """The padded tensors the model's transformer module reads, as its tokenizer would pad them."""
    import torch

    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), loaded.pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        span = slice(width - len(ids), width) if loaded.pad_left else slice(0, len(ids))
        input_ids[row, span] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, span] = 1
    features = {"input_ids": input_ids, "attention_mask": attention_mask}
    if "token_type_ids" in loaded.tokenizer.model_input_names:
        features["token_type_ids"] = torch.zeros_like(input_ids)
    return {name: tensor.to(loaded.device) for name, tensor in features.items()}


def _weights_size(folder: Path) -> str:
    """ " (90 MB)" for a local model folder (its transformer may sit in a subfolder); "" when not known here."""
    if not folder.is_dir():
        return ""
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.suffix in (".safetensors", ".bin"))
    return f" ({size / 1e6:.0f} MB)" if size else ""
