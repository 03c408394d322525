"""The app spec: TOML text -> a validated `AppSpec`, or a `SpecError` whose problems name each key path.

Owns the shape of the TOML file (each engine's deployment table is built from its registry entry: the common keys
below plus the engine's own options), `${ENV}` interpolation, and turning pydantic's errors into messages a person can
act on (the key path, what is wrong, the fix, the nearest valid key). Imports only the standard library and pydantic.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from runtime.engines.registry import ENGINES, EngineInfo

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

DEFAULT_MAX_BODY_MB = 8.0
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
SERVE_METRICS_PUSH_S = 10.0  # how often Ray Serve's replicas and handles report their load (its default)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec: the dotted key path (or `<toml>` for syntax) and what to do about it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class SpecError(Exception):
    """The spec cannot be used. `problems` holds every problem found, not only the first."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = [f"{self.source} is not a valid aana spec:"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSpec(_Section):
    host: str = Field("127.0.0.1", description="Address the HTTP server binds; 0.0.0.0 to listen on all interfaces.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port of the OpenAI-compatible HTTP server.")
    ingress: Literal["auto", "separate"] = Field(
        "auto",
        description="auto: an app of one model serves HTTP from that model's replicas (one Ray hop less per token); "
        "an app of several models, or one that sets ingress_replicas, gets a separate ingress deployment in "
        "front. separate: always the separate ingress (a stream cut by a dying model replica then ends with a "
        "readable error event instead of a dropped connection).",
    )
    ingress_replicas: int | None = Field(
        None,
        ge=1,
        description="Replicas of the separate HTTP ingress (each 0.1 CPU), so one can fail without taking the "
        "endpoint down. Default: 2 when the Ray cluster has at least 4 CPUs, else 1.",
    )
    max_body_mb: float = Field(
        DEFAULT_MAX_BODY_MB, gt=0, description="Largest request body accepted; larger ones get 413."
    )
    allowed_hosts: list[str] | None = Field(
        None,
        description="Host header values the server answers (a port is ignored; `*` for any), against DNS "
        "rebinding. Default: localhost, 127.0.0.1 and ::1 on a loopback bind, any host otherwise.",
    )
    request_timeout_s: float = Field(
        600.0,
        gt=0,
        description="Longest a request may take: before its first token it gets 504, a stream an error event; "
        "the model stops generating for it. A deployment may set its own.",
    )
    api_key: str | None = Field(
        None,
        description="When set, requests must send `Authorization: Bearer <api_key>`. Write `${ENV_VAR}` to keep it "
        "out of the file.",
    )
    auth: Literal["auto", "keys"] = Field(
        "auto",
        description="auto: requests need a key from `aana keys create` once the database holds any key (revoked and "
        "expired ones count), and none before; keys: always (with no key yet, only `api_key` gets in). `api_key` "
        "works beside the keys.",
    )
    store_completions: bool = Field(
        False,
        description="Keep chat completions made with `store: true` (request and response) for the key that made "
        "them, for GET/DELETE /v1/chat/completions; off: `store: true` is a 400.",
    )
    store_retention_days: float = Field(
        30.0, gt=0, description="Stored completions older than this are deleted (checked hourly)."
    )


class DatabaseSpec(_Section):
    url: str | None = Field(
        None,
        description="SQLAlchemy URL of the aana database (sqlite:///path or postgresql://...). Default: a SQLite "
        "file in the user's data directory.",
    )


class RaySpec(_Section):
    address: str | None = Field(
        None,
        description="Ray cluster to deploy on: `auto` (a running local cluster) or `ray://host:10001`. "
        "Default: start an embedded local Ray for this app.",
    )
    num_cpus: int | None = Field(
        None, ge=1, description="CPUs the embedded local Ray may use (default: all). Ignored with an address."
    )


class SamplingSpec(_Section):
    """Defaults for whatever a request leaves out. Names and ranges follow the OpenAI API and vLLM."""

    temperature: float | None = Field(None, ge=0, le=2, description="0 is greedy decoding.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int | None = Field(None, ge=-1, description="Sample among the k most likely tokens; -1 or 0 disables.")
    min_p: float | None = Field(None, ge=0, le=1, description="Drop tokens below min_p times the top probability.")
    max_tokens: int | None = Field(None, ge=1, description="Most tokens generated when the request names none.")
    repetition_penalty: float | None = Field(None, gt=0, description="1.0 disables; >1 discourages repeats.")
    presence_penalty: float | None = Field(None, ge=-2, le=2, description="OpenAI presence penalty.")
    frequency_penalty: float | None = Field(None, ge=-2, le=2, description="OpenAI frequency penalty.")
    stop: list[str] | None = Field(None, description="Stop sequences; generation ends before them.")
    seed: int | None = Field(None, description="Seed for sampling when the request names none.")

    @field_validator("stop", mode="before", json_schema_input_type=str | list[str] | None)
    @classmethod
    def _one_stop_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class AutoscalingSpec(_Section):
    """Ray Serve's request-based autoscaler for one model: it keeps each replica near `target_ongoing_requests`
    (running plus waiting), between `min_replicas` and `max_replicas`."""

    min_replicas: int = Field(
        1,
        description="Replicas it starts with and never goes below. At least 1: GET /health asks every model, and "
        "the model that serves the app's HTTP cannot scale to zero.",
    )
    max_replicas: int = Field(
        ge=1,
        description="Most replicas; each needs its own num_cpus and num_gpus, and the request limits are sized "
        "for this many.",
    )
    target_ongoing_requests: float = Field(
        2.0, gt=0, description="Requests (running and waiting) per replica the autoscaler aims for."
    )
    upscale_delay_s: float = Field(
        30.0, ge=0, description="How long the load must call for more replicas before they are added."
    )
    downscale_delay_s: float = Field(
        600.0, ge=0, description="How long the load must call for fewer replicas before they are removed."
    )
    look_back_period_s: float = Field(
        30.0,
        description="Window the load is averaged over; a shorter one follows a change sooner. More than "
        f"{SERVE_METRICS_PUSH_S:g} s (how often Ray Serve's replicas report their load).",
    )

    @field_validator("min_replicas")
    @classmethod
    def _keeps_one_replica(cls, value: int) -> int:
        if value < 1:
            raise ValueError(
                "must be at least 1: aana keeps one replica of every model (GET /health asks each model, and the "
                "model that serves the app's HTTP cannot scale to zero)"
            )
        return value

    @field_validator("max_replicas")
    @classmethod
    def _at_least_min(cls, value: int, info: ValidationInfo) -> int:
        low = info.data.get("min_replicas")
        if low is not None and value < low:
            raise ValueError(f"must be at least min_replicas ({low}); raise it or lower min_replicas")
        return value

    @field_validator("look_back_period_s")
    @classmethod
    def _longer_than_a_report(cls, value: float) -> float:
        if value <= SERVE_METRICS_PUSH_S:
            raise ValueError(
                f"must be more than {SERVE_METRICS_PUSH_S:g} s: Ray Serve's replicas report their load every "
                f"{SERVE_METRICS_PUSH_S:g} s, so a shorter window averages at most one report"
            )
        return value


# The tool-call formats runtime.openai.tool_parsers reads (a unit test keeps the two lists equal).
ToolParserName = Literal["hermes", "llama3_json", "mistral"]


class _DeploymentBase(_Section):
    model: str = Field(
        description="Where the weights are: a Hugging Face id (`org/name`), a local directory, a `.gguf` file, or "
        "`pkg:<python_package>/<file>` for a file shipped inside an installed Python package.",
    )
    tokenizer: str | None = Field(None, description="Tokenizer source when it differs from `model`.")
    revision: str | None = Field(None, description="Model revision (branch, tag or commit) for Hugging Face ids.")
    num_replicas: int = Field(
        1, ge=1, description="Copies of this model, each with its own resources. Exclusive with [autoscaling]."
    )
    autoscaling: AutoscalingSpec | None = Field(
        None, description="Scale the replicas with the load instead of a fixed num_replicas."
    )
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per replica; fractions allowed.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved per replica; fractions allowed.")
    resources: dict[Annotated[str, StringConstraints(min_length=1, max_length=128)], Annotated[float, Field(gt=0)]] = (
        Field(
            default_factory=dict,
            description="Custom Ray resources each replica needs, e.g. {big_memory = 1}: replicas go only to the "
            "nodes started with them (`ray start --resources '{\"big_memory\": 1}'`).",
        )
    )
    max_model_len: int | None = Field(None, ge=1, description="Context length (prompt + completion) in tokens.")
    max_ongoing_requests: int = Field(16, ge=1, description="Requests one replica accepts at once before queueing.")
    max_queued_requests: int | None = Field(
        None,
        ge=0,
        description="Requests that may wait for a replica beyond those running; more get 429 with Retry-After at "
        "once. Default: 2 x max_ongoing_requests x num_replicas (autoscaling.max_replicas with autoscaling).",
    )
    request_timeout_s: float | None = Field(None, gt=0, description="This model's own [server] request_timeout_s.")
    max_tokens_per_request: int = Field(
        16384,
        ge=1,
        description="Most tokens one request may ask for over all its choices (n x max_tokens); more is a 400, so "
        "one request cannot starve the others.",
    )
    max_logprobs_per_request: int = Field(
        65536,
        ge=1,
        description="Most logprob entries one request may ask for (n x max_tokens x (1 + top_logprobs)); more is a "
        "400.",
    )
    chat_template: str | None = Field(
        None,
        description="`model` or unset: the model's own; a bundled name (`llama2`, `chatml`, `hermes`: ChatML with "
        "tool calling); a file path; or inline Jinja text.",
    )
    tool_parser: ToolParserName | None = Field(
        None,
        description="How tool calls are read from the model's text for tool_choice `auto` (the model's own format: "
        "`hermes`, `llama3_json`, `mistral`). Unset: `auto` is a 400; `required` and named tools still work.",
    )
    sampling: SamplingSpec = Field(default_factory=SamplingSpec, description="Default sampling parameters.")
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Pass-through keyword arguments for the engine (Transformers `from_pretrained`, vLLM "
        "`AsyncEngineArgs`) that have no key of their own here.",
    )

    @model_validator(mode="after")
    def _fixed_or_autoscaled(self) -> _DeploymentBase:
        if self.autoscaling is not None and "num_replicas" in self.model_fields_set:
            raise ValueError(
                "num_replicas and [autoscaling] are both set; keep one: a fixed num_replicas, or the autoscaling "
                "table (its min_replicas is what starts)"
            )
        return self


def _deployment_class(info: EngineInfo) -> type[_DeploymentBase]:
    """One engine's deployment table: the common keys, the engine's own options, and `engine` as the tag."""
    fields: dict[str, Any] = {"engine": (Literal[info.name], Field(description=info.description))}
    if info.default_model is not None:
        fields["model"] = (str, Field(info.default_model, description=f"Unused by the {info.name} engine."))
    name = f"{info.options.__name__.removesuffix('Options')}Deployment"
    return create_model(name, __base__=(info.options, _DeploymentBase), __module__=__name__, **fields)


# engine name -> its deployment table's model, in the registry's order
DEPLOYMENT_CLASSES: dict[str, type[_DeploymentBase]] = {name: _deployment_class(e) for name, e in ENGINES.items()}
ENGINE_NAMES = tuple(DEPLOYMENT_CLASSES)
DeploymentSpec = Annotated[Union[tuple(DEPLOYMENT_CLASSES.values())], Field(discriminator="engine")]


class AppSpec(_Section):
    name: str = Field(pattern=NAME_PATTERN, description="App name on Ray Serve.")
    server: ServerSpec = Field(default_factory=ServerSpec, description="HTTP server settings.")
    database: DatabaseSpec = Field(default_factory=DatabaseSpec, description="Database settings.")
    ray: RaySpec = Field(default_factory=RaySpec, description="Where to run.")
    deployments: dict[Annotated[str, StringConstraints(pattern=NAME_PATTERN)], DeploymentSpec] = Field(
        min_length=1, description="One table per model; the table's name is the OpenAI `model` id."
    )


# ---------------------------------------------------------------------------------------------------------------
# Loading


def load_spec(path: str | Path, environ: dict[str, str] | None = None) -> AppSpec:
    """Read, interpolate and validate a spec file. Raises SpecError with every problem found."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(str(path), [Problem("<file>", "no such file; check the path")]) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise SpecError(str(path), [Problem("<file>", f"cannot read it: {exc}")]) from None
    return parse_spec(text, source=str(path), environ=environ)


def parse_spec(text: str, source: str = "<spec>", environ: dict[str, str] | None = None) -> AppSpec:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(source, [Problem("<toml>", f"not valid TOML: {exc}")]) from None
    problems: list[Problem] = []
    raw = _interpolate(raw, (), os.environ if environ is None else environ, problems)
    try:
        spec = AppSpec.model_validate(raw)
    except ValidationError as exc:
        # A missing variable was replaced by "": its own problem says so; one about the empty value would mislead.
        env_paths = {p.path for p in problems}
        problems += [p for p in (_problem(err, raw) for err in exc.errors()) if p.path not in env_paths]
    if problems:
        raise SpecError(source, problems)
    return spec


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(value: Any, path: tuple, environ: Any, problems: list[Problem]) -> Any:
    """Replace `${NAME}` and `${NAME:-default}` in every string value."""
    if isinstance(value, dict):
        return {k: _interpolate(v, (*path, k), environ, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*path, i), environ, problems) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        problems.append(
            Problem(_dotted(path), f"environment variable {name} is not set; export it or write ${{{name}:-default}}")
        )
        return ""

    return _ENV_REF.sub(substitute, value)


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _strip_union_tags(loc: tuple) -> tuple:
    # pydantic puts the discriminator value into the path (deployments.llm.vllm.dtype); users never wrote it.
    if len(loc) > 2 and loc[0] == "deployments" and loc[2] in ENGINE_NAMES:
        return loc[:2] + loc[3:]
    return loc


def _problem(err: dict, raw: dict) -> Problem:
    loc = _strip_union_tags(tuple(err["loc"]))
    kind = err["type"]
    if loc and loc[-1] == "[key]":
        return Problem(
            _dotted(loc[:-1]),
            "a deployment name must start with a letter or digit and hold only letters, digits, '.', '_' and '-' "
            "(it becomes the OpenAI model id); rename the table",
        )
    if kind == "too_short" and loc == ("deployments",):
        return Problem(
            "deployments", "no deployments; add a table such as [deployments.<name>] with `engine` and `model`"
        )
    if kind == "extra_forbidden":
        return Problem(_dotted(loc), _unknown_key(str(loc[-1]), loc[:-1], raw))
    if kind == "missing":
        return Problem(_dotted(loc), f"missing required key {str(loc[-1])!r}; {_describe(loc, raw)}")
    if kind == "union_tag_invalid":
        given = err.get("ctx", {}).get("tag")
        hint = _nearest(str(given), ENGINE_NAMES)
        fix = f" (did you mean {hint!r}?)" if hint else ""
        return Problem(
            _dotted((*loc, "engine")),
            f"unknown engine {given!r}{fix}; choose one of: {', '.join(ENGINE_NAMES)}",
        )
    if kind == "union_tag_not_found":
        return Problem(
            _dotted((*loc, "engine")), f"missing required key 'engine'; choose one of: {', '.join(ENGINE_NAMES)}"
        )
    message = err["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if "input" in err and kind not in ("dict_type", "model_type") and not isinstance(err["input"], dict):
        message += f" (got {err['input']!r})"
    return Problem(_dotted(loc), message)


def _model_at(loc: tuple, raw: dict) -> type[BaseModel] | None:
    """The pydantic model describing the table at `loc` (tags already stripped), or None."""
    model: type[BaseModel] = AppSpec
    data: Any = raw
    i = 0
    while i < len(loc):
        part = loc[i]
        if model is AppSpec and part == "deployments":
            if i + 1 >= len(loc):
                return None
            data = (data.get("deployments") or {}).get(loc[i + 1], {}) if isinstance(data, dict) else {}
            engine = data.get("engine") if isinstance(data, dict) else None
            model = DEPLOYMENT_CLASSES.get(engine, _DeploymentBase)
            i += 2
            continue
        field = model.model_fields.get(str(part))
        annotation = _table_model(getattr(field, "annotation", None))
        if annotation is None:
            return None
        model = annotation
        data = data.get(part, {}) if isinstance(data, dict) else {}
        i += 1
    return model


def _table_model(annotation: Any) -> type[BaseModel] | None:
    """The model of a sub-table field, also when the table is optional (`AutoscalingSpec | None`)."""
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _unknown_key(key: str, table: tuple, raw: dict) -> str:
    """Say the key is unknown and point at the nearest valid key, here or one table down."""
    model = _model_at(table, raw)
    if model is None:
        return f"unknown key {key!r}"
    candidates = {name: name for name in model.model_fields}
    for name, field in model.model_fields.items():
        if (sub := _table_model(field.annotation)) is not None:
            candidates.update({f"{name}.{child}": child for child in sub.model_fields})
    best, best_score = None, 0.0
    for full, short in candidates.items():
        score = difflib.SequenceMatcher(None, key, short).ratio() + (0.01 if full == short else 0)
        if score > best_score:
            best, best_score = full, score
    if best and best_score >= 0.75:
        if "." in best:
            where = _dotted(table + tuple(best.split(".")[:-1]))
            return f"unknown key {key!r}; did you mean {best.split('.')[-1]!r} in the [{where}] table?"
        return f"unknown key {key!r}; did you mean {best!r}?"
    return f"unknown key {key!r}; valid keys here: {', '.join(sorted(model.model_fields))}"


def _describe(loc: tuple, raw: dict) -> str:
    model = _model_at(loc[:-1], raw)
    field = model.model_fields.get(str(loc[-1])) if model else None
    return field.description if field and field.description else "add it"


def _nearest(word: str, choices: Any) -> str | None:
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None
