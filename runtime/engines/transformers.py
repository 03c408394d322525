"""The Hugging Face Transformers engine: one `AutoModelForCausalLM` per replica, on CPU or one GPU.

Owns loading the model (through `runtime.weights`), the chat template, the context-length budget, per-request
sampling and the batching thread; `transformers_stream` turns each request's token ids into deltas.

Concurrent requests share forward passes through Transformers' continuous batching (`init_continuous_batching`):
one thread runs each step over every running request (prefill chunks and decodes mixed, on a paged KV cache) and
admits new requests and drops cancelled ones between steps, so a stream closed early stops within a step while the
others go on. Its own per-request sampling is temperature, top-k and top-p drawn from one global RNG, so the batch
decodes greedily from rows that `transformers_sampling` has already decided per request (logit bias, penalties,
the grammar of a structured output, Transformers' own processors, the request's own torch.Generator; logprobs).
A seed thus gives the same text whatever else is in the batch (up to float rounding that depends on the batch's
shape, as in any batching server). n choices are n batch requests (seed + index), or one when greedy. CUDA graphs and asynchronous
batching stay off: the sampler runs Python at every step and reads each request's tokens so far.

torch and transformers are imported inside functions, not when this module is imported: whoever looks up the
engine class (the app builder, a test) does not pay for torch; the replica imports it when start() runs.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import logging
import math
import os
import threading
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.engines.base import (
    Delta,
    Engine,
    EngineError,
    GenerationParams,
    GenerationRequest,
    completion_budget,
    no_chat_template_error,
    request_prompt_ids,
)
from runtime.engines.transformers_sampling import Grammars, RequestSampling, request_sampling, sampler_class
from runtime.engines.transformers_stream import ChoiceGroup, GenerationFailed, RequestStream, TextTracker
from runtime.weights import ResolvedModel, offline_hint, pending_conversion, resolve_weights

log = logging.getLogger(__name__)

# The paged KV cache on CPU (unless the spec sets kv_cache_space_gb): at most this much memory, but always room for
# one request of max_model_len tokens. When running requests outgrow it, Transformers frees the newest and recomputes
# it later (slower, never wrong). SmolLM2-135M takes 46 KB a token: 0.25 GiB holds ~5,800 tokens.
CPU_KV_CACHE_BYTES = 256 << 20
CPU_PAGE_SIZE = 64  # tokens per cache page; small pages waste less memory on short requests
CPU_MAX_BATCH_TOKENS = 512  # tokens per forward pass; longer prompts are prefilled in chunks of this size
STOP_TIMEOUT_S = 10.0
MIN_TRANSFORMERS = (5, 19)  # the continuous batching API driven here (page_size, result handlers, processors)
TRANSFORMERS_HINT = "pip install 'transformers>=5.19,<5.20'"


@dataclass(frozen=True)
class _Loaded:
    model: Any
    tokenizer: Any
    device: str
    max_model_len: int
    eos_ids: frozenset[int]
    batching: _Batching
    vocab_size: int
    grammars: Grammars


class TransformersEngine(Engine):
    """Serves one model, batching concurrent requests (see the module docstring)."""

    def __init__(self, config: Any):
        super().__init__(config)
        self._loaded: _Loaded | None = None
        self._closing = False
        self._streams: dict[str, RequestStream] = {}  # the requests the manager holds, by its request id
        self._ids = itertools.count()  # client request ids may repeat; the manager's must not

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        # Loading blocks for seconds to minutes; in a thread, the replica's event loop keeps answering Ray.
        self._loaded = await asyncio.to_thread(self._load)
        self.step("warming up (one token through the batch)")
        await self._warm_up()

    def _load(self) -> _Loaded:
        self.step("importing torch and transformers")
        from transformers import __version__

        if tuple(int(part) for part in __version__.split(".")[:2]) < MIN_TRANSFORMERS:
            raise RuntimeError(f"transformers {__version__} is too old for this engine: {TRANSFORMERS_HINT}")
        _import_loaders()
        config, options = self.config, self.config.options
        device = pick_device(options.device, config.num_gpus)
        if gguf := pending_conversion(config.source):
            self.step(f"converting {gguf.name} to safetensors (once)")
        resolved = resolve_weights(config.source, config.tokenizer)
        self.step(f"loading the weights{_weights_size(resolved)} on {device}")
        tokenizer = _load_tokenizer(resolved)
        if config.chat_template is not None:
            tokenizer.chat_template = config.chat_template
        elif not tokenizer.chat_template:
            raise no_chat_template_error(config)
        model = _load_model(resolved, device, options.dtype, config.engine_args)
        model.eval()
        max_model_len = config.max_model_len or _model_context(model)
        if max_model_len is None:
            raise RuntimeError(
                f"cannot tell the context length of {config.source.describe()}; set `max_model_len` in the spec"
            )
        eos_ids = frozenset(_eos_ids(model, tokenizer))
        threads = torch_threads(config)
        kv_bytes = int(options.kv_cache_space_gb * (1 << 30)) if options.kv_cache_space_gb else CPU_KV_CACHE_BYTES
        batching = _Batching(model, device, max_model_len, config.max_ongoing_requests, threads, kv_bytes)
        log.info("%s loaded on %s (%s), max_model_len=%d", config.model_id, device, model.dtype, max_model_len)
        vocab_size = model.config.get_text_config().vocab_size
        grammars = Grammars(tokenizer, vocab_size, eos_ids)
        return _Loaded(model, tokenizer, device, max_model_len, eos_ids, batching, vocab_size, grammars)

    async def _warm_up(self) -> None:
        """One greedy token through the batch, so that the batching thread builds its KV cache and reads the weights
        in now rather than in the first client's request."""
        loaded = self._loaded
        prompt = loaded.tokenizer("Hello", add_special_tokens=False)["input_ids"] or [0]
        try:
            async for _ in self._run(prompt, GenerationParams(max_tokens=1), 1, frozenset(), "warm-up"):
                pass
        except EngineError as exc:
            raise RuntimeError(f"the batching thread did not start: {loaded.batching.fatal_error()}") from exc

    async def check_health(self) -> None:
        if self._loaded is None:
            raise RuntimeError("the model is not loaded (start() has not finished or failed)")
        if not self._loaded.batching.is_running():
            raise RuntimeError(f"the batching thread has stopped: {self._loaded.batching.fatal_error()}")

    async def shutdown(self) -> None:
        self._closing = True
        loaded, self._loaded = self._loaded, None
        if loaded is None:
            return
        await asyncio.to_thread(loaded.batching.stop)  # the streams still running end with "unavailable"
        if loaded.device.startswith("cuda"):
            import torch

            del loaded
            torch.cuda.empty_cache()

    @property
    def max_model_len(self) -> int | None:
        return self._loaded.max_model_len if self._loaded else None

    def load(self) -> dict[str, int]:
        running = sum(stream.started for stream in self._streams.values())
        return {"running": running, "waiting": len(self._streams) - running}

    # -- generation ------------------------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        loaded = self._ready()
        params = request.params
        prompt_ids = request_prompt_ids(loaded.tokenizer, request, vocab_size=loaded.vocab_size)
        max_new = completion_budget(len(prompt_ids), params.max_tokens, request.max_tokens_requested,
                                     loaded.max_model_len)  # fmt: skip
        eos_ids = frozenset() if params.ignore_eos else loaded.eos_ids
        async for delta in self._run(prompt_ids, params, max_new, eos_ids, request.request_id):
            yield delta

    async def _run(self, prompt_ids: list[int], params: GenerationParams, max_new: int, eos_ids: frozenset[int],
                   request_id: str) -> AsyncIterator[Delta]:  # fmt: skip
        """Every choice of one request through the batch: one batch request per choice (seeded seed + index, as
        vLLM's), or, when greedy, one that stands for all n (they would be identical)."""
        loaded = self._loaded
        grammar = await asyncio.to_thread(loaded.grammars.compile, params.structured) if params.structured else None
        copies = params.n if not params.temperature else 1
        runs = 1 if copies > 1 else params.n
        batching, streams = loaded.batching, {}
        try:
            for index in range(runs):
                seed = None if params.seed is None else params.seed + index
                sampling = request_sampling(params, loaded.model.device, loaded.vocab_size, seed, grammar)
                stream = RequestStream(TextTracker(loaded.tokenizer, params.stop), len(prompt_ids), max_new, eos_ids,
                                       index, sampling.records if params.logprobs is not None else None)  # fmt: skip
                batch_id = f"{request_id}#{next(self._ids)}"
                streams[batch_id] = stream
                self._streams[batch_id] = stream
                if not batching.add(batch_id, prompt_ids, max_new, eos_ids, sampling, stream.put):
                    raise self._unavailable()
            async for delta in ChoiceGroup(list(streams.values()), copies).deltas():
                yield delta
        except GenerationFailed as exc:
            if self._closing:
                raise self._unavailable() from exc
            raise
        finally:
            for batch_id, stream in streams.items():  # closed early, or ended by a stop string: leave the batch
                batching.release(batch_id, cancel=not stream.finished)
                del self._streams[batch_id]

    def _ready(self) -> _Loaded:
        if self._closing:
            raise self._unavailable()
        if self._loaded is None:
            raise EngineError("unavailable", "the model is still loading; retry shortly")
        if not self._loaded.batching.is_running():
            raise self._unavailable()
        return self._loaded

    def _unavailable(self) -> EngineError:
        if self._closing:
            return EngineError("unavailable", "this replica is shutting down; retry")
        return EngineError("unavailable", "this replica's model is unusable; it is being replaced")


# -- continuous batching -----------------------------------------------------------------------------------


class _Batching:
    """Transformers' continuous batching over one model: the manager, its thread, and the `_Sampler` inside it."""

    def __init__(self, model: Any, device: str, max_model_len: int, max_requests: int, threads: int, kv_bytes: int):
        from transformers import ContinuousBatchingConfig, GenerationConfig, LogitsProcessorList
        from transformers.generation.continuous_batching.cb_logits_processors import (
            ContinuousBatchingLogitsProcessorList,
        )

        cb_config = ContinuousBatchingConfig(
            max_requests_per_batch=max_requests, use_cuda_graph=False, use_async_batching=False,
            **_cache_sizing(model, device, max_model_len, max_requests, kv_bytes),
        )  # fmt: skip
        # do_sample=False: the batch takes the argmax of what the sampler returns, a row with one finite logit.
        self.manager = model.init_continuous_batching(GenerationConfig(do_sample=False, eos_token_id=-1), cb_config)
        self.sampler = sampler_class()()
        processors = ContinuousBatchingLogitsProcessorList(LogitsProcessorList([self.sampler]))
        processors.tensors_required = 1  # the argument row each batching processor gets (counted only for its own)
        self.manager.logit_processor = processors  # read when the thread builds its batch processor, in start()
        self._start_thread(threads)
        # A daemon thread still inside torch when the interpreter exits can abort it: stop it first.
        atexit.register(self.stop)

    def _start_thread(self, threads: int) -> None:
        """Start the manager's thread from a daemon thread that set torch's thread count: a thread inherits both, so
        the batch uses `options.threads` cores and an engine nobody shut down does not keep the process alive."""

        def start() -> None:
            import torch

            torch.set_num_threads(threads)
            self.manager.start()

        starter = threading.Thread(target=start, name="aana-batching-start", daemon=True)
        starter.start()
        starter.join()

    def is_running(self) -> bool:
        return self.manager.is_running()

    def fatal_error(self) -> str:
        status = getattr(self.manager, "background_thread_status", None)
        return str(getattr(status, "fatal_error", None) or "no error recorded")

    def add(self, request_id: str, prompt_ids: list[int], max_new: int, eos_ids: Collection[int],
            sampling: RequestSampling, on_output: Callable[[Any], None]) -> bool:  # fmt: skip
        """Queue a request; `on_output` then gets its output, on this event loop, after every step that grew it.
        False when the manager takes no more work (its thread is stopping or dead)."""
        self.sampler.requests[request_id] = sampling
        self.manager.register_result_handler(request_id, on_output)
        # eos -1 is no token: the request then ends at max_new_tokens only.
        added = self.manager.add_request(prompt_ids, request_id=request_id, max_new_tokens=max_new, streaming=True,
                                         eos_token_id=sorted(eos_ids) or -1)  # fmt: skip
        return added is not None

    def release(self, request_id: str, cancel: bool) -> None:
        """Forget a request; `cancel`: it is still in the batch, drop it from the next step on."""
        self.sampler.requests.pop(request_id, None)
        if cancel:
            self.manager.cancel_request(request_id)
            # The manager drops a result handler only when its request finishes; a cancelled one never does.
            router = self.manager.output_router
            with router._lock:
                router.result_handlers.pop(request_id, None)

    def stop(self) -> None:
        """A hard stop: requests still running fail (their streams end with an error)."""
        atexit.unregister(self.stop)
        if self.manager.is_running():
            self.manager.stop(block=True, timeout=STOP_TIMEOUT_S, hard_stop=True)


def _cache_sizing(model: Any, device: str, max_model_len: int, max_requests: int, kv_bytes: int) -> dict[str, Any]:
    """The paged KV cache's size. On a GPU, Transformers sizes it from the free memory; on a CPU it would take most
    of the machine's, so it is sized here: `kv_bytes` (see CPU_KV_CACHE_BYTES), at least one max_model_len request."""
    if device != "cpu":
        return {"max_memory_percent": 0.8}  # headroom for the vocabulary-sized tensors the sampler makes
    text_config = model.config.get_text_config()
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads
    token_bytes = 2 * text_config.num_hidden_layers * kv_heads * head_dim * model.dtype.itemsize
    tokens = min(max_model_len * max_requests, max(max_model_len, kv_bytes // token_bytes))
    return {
        "page_size": CPU_PAGE_SIZE,
        "num_blocks": math.ceil(tokens / CPU_PAGE_SIZE) + max_requests,  # + each request's part-filled last page
        "max_batch_tokens": CPU_MAX_BATCH_TOKENS,
    }


# -- pure helpers ------------------------------------------------------------------------------------------


def torch_threads(config: Any) -> int:
    """The batch's torch threads: the spec's `threads`, else as many as the cores Ray reserved for the replica. On a
    small machine more threads than that fight Ray's own processes and the event loop for the cores (measured: slower
    at c=1 and at c=8). bench/model_scaling.py uses the same count."""
    return config.options.threads or max(1, min(int(config.num_cpus), os.cpu_count() or 1))


def pick_device(device: str, num_gpus: float) -> str:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError('device = "cuda" but torch sees no CUDA GPU here; set device = "auto" or "cpu"')
    if device == "auto":
        return "cuda" if torch.cuda.is_available() and num_gpus > 0 else "cpu"
    return device


def _torch_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        # CPUs are slow or inexact with half precision; on a GPU the checkpoint's own dtype is right.
        return torch.float32 if device == "cpu" else "auto"
    return getattr(torch, dtype)


def _import_loaders() -> None:
    """Import what loading a model pulls in, under the import step: transformers imports lazily, and its first
    AutoTokenizer / AutoModelForCausalLM use imports ~3 s more here (auto classes, modeling and generation utils, with
    torch.distributed, torch._dynamo and sklearn behind them), which the load step would otherwise show as weights."""
    import transformers.generation.utils
    import transformers.modeling_utils  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
    from transformers.models.auto import modeling_auto, tokenization_auto  # noqa: F401


def _load_tokenizer(resolved: ResolvedModel) -> Any:
    from transformers import AutoTokenizer

    revision = resolved.revision if resolved.tokenizer is None else None
    try:
        return AutoTokenizer.from_pretrained(resolved.tokenizer_source, revision=revision)
    except OSError as exc:
        raise RuntimeError(_not_loadable("tokenizer", resolved.tokenizer_source, exc)) from exc


def _load_model(resolved: ResolvedModel, device: str, dtype: str, engine_args: dict[str, Any]) -> Any:
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": _torch_dtype(dtype, device), "device_map": device, "revision": resolved.revision}
    kwargs.update(engine_args)  # the spec's pass-through wins: it is the user's explicit choice
    try:
        return AutoModelForCausalLM.from_pretrained(resolved.path_or_id, **kwargs)
    except OSError as exc:
        raise RuntimeError(_not_loadable("model", resolved.path_or_id, exc)) from exc


def _weights_size(resolved: ResolvedModel) -> str:
    """ " (513 MB)" for a local folder of weights; "" when the size is not known here (a hub id not yet cached)."""
    folder = Path(resolved.path_or_id)
    if not folder.is_dir():
        return ""
    size = sum(f.stat().st_size for pattern in ("*.safetensors", "*.bin") for f in folder.glob(pattern))
    return f" ({size / 1e6:.0f} MB)" if size else ""


def _not_loadable(what: str, source: str, exc: Exception) -> str:
    return f"cannot load the {what} {source!r}: {exc}{offline_hint(source)}"


def _model_context(model: Any) -> int | None:
    text_config = model.config.get_text_config()
    return getattr(text_config, "max_position_embeddings", None)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
