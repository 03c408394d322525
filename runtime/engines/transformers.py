"""The Hugging Face Transformers engine: one `AutoModelForCausalLM` per replica, on CPU or one GPU.

Owns loading the model (through `runtime.weights`), the chat template, the context-length budget, sampling
parameters, token streaming with incremental detokenization, stop strings, and cancellation.

Generations are serialised: one `model.generate` runs at a time per replica, the others wait their turn in FIFO
order (an asyncio.Lock). Transformers has no continuous batching, and two generate calls sharing one model from
two threads would compete for the same cores and the global RNG that seeds sampling; for throughput, add replicas
or use the vLLM engine. A stream closed early (the client went away) stops its generate within one token, and the
next request starts only once that generate has returned.

torch and transformers are imported inside functions, not when this module is imported: whoever looks up the
engine class (the app builder, a test) does not pay for torch; the replica imports it when start() runs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runtime.engines.base import (
    Delta,
    Engine,
    EngineError,
    FinishReason,
    GenerationParams,
    GenerationRequest,
    chat_prompt_ids,
    completion_budget,
    no_chat_template_error,
)
from runtime.engines.stops import StopMatcher
from runtime.weights import ResolvedModel, offline_hint, resolve_weights

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_DONE = object()  # end of the token stream, sent by the worker thread however generate ended
_REPLACEMENT = "\ufffd"  # what a decoder shows for an incomplete UTF-8 sequence


@dataclass(frozen=True)
class _Loaded:
    model: Any
    tokenizer: Any
    device: str
    max_model_len: int
    eos_ids: frozenset[int]
    pad_id: int | None
    threads: int


class TransformersEngine(Engine):
    """Serves one model with `model.generate`, one request at a time per replica (see the module docstring)."""

    def __init__(self, config: Any):
        super().__init__(config)
        self._loaded: _Loaded | None = None
        self._fatal: BaseException | None = None
        self._current: _Run | None = None  # the generation holding the model, for shutdown to stop it
        self._lock = asyncio.Lock()
        self._waiting = 0  # generations queued behind the one holding the model
        # One worker thread: generations are serialised anyway, and a dedicated thread keeps them off the
        # default executor that the event loop uses for other blocking work.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aana-generate")

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        # Loading blocks for seconds to minutes; in a thread, the replica's event loop keeps answering Ray.
        self._loaded = await asyncio.to_thread(self._load)

    def _load(self) -> _Loaded:
        import torch

        config, options = self.config, self.config.options
        threads = options.threads or os.cpu_count() or 1
        torch.set_num_threads(threads)
        device = _pick_device(options.device, config.num_gpus)
        resolved = resolve_weights(config.source, config.tokenizer)
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
        eos_ids = _eos_ids(model, tokenizer)
        pad_id = model.generation_config.pad_token_id
        if pad_id is None:
            pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids, default=None)
        log.info("%s loaded on %s (%s), max_model_len=%d", config.model_id, device, model.dtype, max_model_len)
        return _Loaded(model, tokenizer, device, max_model_len, frozenset(eos_ids), pad_id, threads)

    async def check_health(self) -> None:
        if self._fatal is not None:
            raise RuntimeError(f"a generation left the device unusable: {self._fatal}")
        if self._loaded is None:
            raise RuntimeError("the model is not loaded (start() has not finished or failed)")

    async def shutdown(self) -> None:
        loaded, self._loaded = self._loaded, None
        if self._current is not None:
            self._current.stop.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if loaded is not None and loaded.device.startswith("cuda"):
            import torch

            del loaded
            torch.cuda.empty_cache()

    @property
    def max_model_len(self) -> int | None:
        return self._loaded.max_model_len if self._loaded else None

    # -- generation ------------------------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        loaded = self._ready()
        params = request.params
        generate_kwargs = _sampling_kwargs(params)
        prompt_ids = chat_prompt_ids(loaded.tokenizer, request.messages)
        max_new = completion_budget(len(prompt_ids), params.max_tokens, request.max_tokens_requested,
                                     loaded.max_model_len)  # fmt: skip
        run = _Run(loaded, prompt_ids, max_new, params)
        self._waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self._waiting -= 1
        self._current = run
        try:
            future = asyncio.get_running_loop().run_in_executor(
                self._executor, self._generate_blocking, run, generate_kwargs
            )
        except BaseException:
            self._lock.release()
            raise
        # The lock follows the thread, not this coroutine: a client that disconnects mid-stream must not let
        # the next request start while the dying generate still holds the model.
        future.add_done_callback(lambda _: self._release())
        try:
            async for delta in run.deltas(future):
                yield delta
        finally:
            run.stop.set()  # no-op when finished; otherwise generate stops after the token in flight

    def _release(self) -> None:
        self._current = None
        self._lock.release()

    def load(self) -> dict[str, int]:
        return {"running": int(self._lock.locked()), "waiting": self._waiting}

    def _ready(self) -> _Loaded:
        if self._fatal is not None:
            raise EngineError("unavailable", "this replica's model is unusable; it is being replaced")
        if self._loaded is None:
            raise EngineError("unavailable", "the model is still loading; retry shortly")
        return self._loaded

    def _generate_blocking(self, run: _Run, generate_kwargs: dict[str, Any]) -> None:
        import torch
        from transformers import StoppingCriteriaList

        loaded = run.loaded
        if torch.get_num_threads() != loaded.threads:
            # With OpenMP the thread count is per calling thread; start() set it on the loader thread.
            torch.set_num_threads(loaded.threads)
        input_ids = torch.tensor([run.prompt_ids], device=loaded.model.device)
        try:
            if run.params.seed is not None:
                # Safe on the global RNG because generations are serialised (see the module docstring).
                torch.manual_seed(run.params.seed)
            loaded.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=run.max_new,
                min_new_tokens=run.max_new if run.params.ignore_eos else None,
                pad_token_id=loaded.pad_id,
                streamer=run.streamer,
                stopping_criteria=StoppingCriteriaList([_hook_classes()[1](run.stop)]),
                **generate_kwargs,
            )
        except torch.AcceleratorError as exc:
            # A device-side fault poisons the CUDA context for the life of the process: report unhealthy so
            # Ray replaces the replica.
            self._fatal = exc
            raise
        finally:
            run.streamer.close()


class _Run:
    """One generation: the bridge from the worker thread's token ids to the caller's deltas."""

    def __init__(self, loaded: _Loaded, prompt_ids: list[int], max_new: int, params: GenerationParams):
        self.loaded = loaded
        self.prompt_ids = prompt_ids
        self.max_new = max_new
        self.params = params
        self.stop = threading.Event()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.streamer = _hook_classes()[0](asyncio.get_running_loop(), self.queue)

    async def deltas(self, future: asyncio.Future) -> AsyncIterator[Delta]:
        tokenizer, prompt_tokens = self.loaded.tokenizer, len(self.prompt_ids)
        matcher = StopMatcher(self.params.stop)
        generated: list[int] = []
        emitted = ""  # decoded text already passed to the matcher
        while (ids := await self.queue.get()) is not _DONE:
            if matcher.stopped:
                continue  # tokens generated while the stop request reached the thread
            generated.extend(ids)
            text = tokenizer.decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            if text.endswith(_REPLACEMENT):
                continue  # the middle of a multi-byte character; the next token completes it
            new, emitted = text[len(emitted) :], text
            out = matcher.feed(new)
            if matcher.stopped:
                self.stop.set()
            if out:
                yield Delta(out, prompt_tokens, len(generated))
        await future  # re-raise what generate raised, if anything
        # Text still held: a dangling partial character (shown as U+FFFD, as vLLM does) or a partial stop match.
        tail = tokenizer.decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        rest = "" if matcher.stopped else matcher.feed(tail[len(emitted) :]) + matcher.flush()
        yield Delta(rest, prompt_tokens, len(generated), self._finish_reason(matcher, generated))

    def _finish_reason(self, matcher: StopMatcher, generated: Sequence[int]) -> FinishReason:
        if matcher.stopped or (generated and generated[-1] in self.loaded.eos_ids):
            return "stop"
        return "length" if len(generated) >= self.max_new else "stop"


class _QueueStreamerLogic:
    """Hands each new token id from the generate thread to the event loop, without blocking the thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue):
        self._loop = loop
        self._queue = queue
        self._prompt_seen = False
        self._closed = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate's first put is the prompt itself
            self._prompt_seen = True
            return
        self._send(value.reshape(-1).tolist())

    def end(self) -> None:
        pass  # close() signals the end, because it also runs when generate raises

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._send(_DONE)

    def _send(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:
            pass  # the loop is closed: nobody is listening any more


class _EventStopLogic:
    """Stops generate after the current token once the event is set (stop string found, client gone)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@functools.cache
def _hook_classes() -> tuple[type, type]:
    """The streamer and stopping criterion as subclasses of Transformers' bases, built on first use so that
    importing this module does not import transformers."""
    from transformers import StoppingCriteria
    from transformers.generation.streamers import BaseStreamer

    class QueueStreamer(_QueueStreamerLogic, BaseStreamer):
        pass

    class EventStop(_EventStopLogic, StoppingCriteria):
        pass

    return QueueStreamer, EventStop


# -- pure helpers ------------------------------------------------------------------------------------------


def _pick_device(device: str, num_gpus: float) -> str:
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


def _sampling_kwargs(params: GenerationParams) -> dict[str, Any]:
    """GenerationParams -> generate() keyword arguments; every value is explicit so the model's
    generation_config defaults (often top_k=50 or a temperature) do not leak into what the client asked."""
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(params, name):
            raise EngineError("invalid_request", f"the transformers engine does not support {name}", name)
    if not params.temperature:  # None (neither request nor spec set one) or 0: greedy
        # Sampling knobs are left unset here: greedy ignores them, and setting them makes Transformers warn.
        return {"do_sample": False, "repetition_penalty": params.repetition_penalty or 1.0}
    return {
        "do_sample": True,
        "temperature": params.temperature,
        "top_p": params.top_p if params.top_p is not None else 1.0,
        "top_k": params.top_k if params.top_k and params.top_k > 0 else 0,
        "min_p": params.min_p or 0.0,
        "repetition_penalty": params.repetition_penalty or 1.0,
    }
