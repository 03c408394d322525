"""The spec's JSON Schema: what `aana schema` prints and what editors read through a `#:schema` line (taplo, Even
Better TOML), generated from the pydantic models of `runtime.spec` so that it never drifts from them.

Pydantic's schema is adjusted for TOML in three ways (and loses its titles, which only repeat the key names):
- TOML has no null: an optional key is described by its value's type alone (`anyOf [T, null]` becomes T).
- `${VAR}` and `${VAR:-default}` are interpolated before validation in every string value, and pydantic then reads
  "8000" as a port: a number, boolean or constrained string (enum, pattern) also accepts a string holding a
  reference. The engine stays a plain constant: it picks each deployment's table (`oneOf` over the engines, with
  OpenAPI's `discriminator` beside it for the editors that read it).
- A deployment name's pattern becomes `propertyNames`, and each deployment's schema `additionalProperties`, so a
  badly named table is an error and editors complete inside any deployment table.

The keywords used mean the same in draft 7 and 2020-12 (the draft pydantic writes, declared in `$schema`), so an
editor on either validates alike. Imports only the standard library and pydantic (through `runtime.spec`).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from runtime.spec import _ENV_REF, AppSpec

SCHEMA_DRAFT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_TITLE = "aana app spec"
_ENV_DEF = "EnvReference"
_ENV_REFERENCE = {
    "type": "string",
    "pattern": _ENV_REF.pattern,
    "description": "`${VAR}` or `${VAR:-default}`: replaced from the environment when the spec is loaded.",
}
_ANNOTATIONS = ("description", "default", "examples")
_SCALARS = ("integer", "number", "boolean")


def spec_json_schema() -> dict[str, Any]:
    """The JSON Schema of an aana spec file (the raw TOML table, before `${VAR}` interpolation)."""
    schema = _for_toml(copy.deepcopy(AppSpec.model_json_schema()))
    defs = schema.pop("$defs")
    defs[_ENV_DEF] = _ENV_REFERENCE
    return {
        "$schema": SCHEMA_DRAFT,
        "title": SCHEMA_TITLE,
        "description": "An aana app spec: the models to serve and how, as an OpenAI-compatible API on Ray Serve. "
        "`aana validate SPEC` checks what this schema cannot (bundled templates, local paths, engine arguments).",
        **schema,
        "$defs": defs,
    }


def _for_toml(node: Any) -> Any:
    if isinstance(node, list):
        return [_for_toml(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = _without_null(node)
    node = _named_tables(node)
    out = {}
    for key, value in node.items():
        if key == "title":
            continue  # pydantic's titles repeat the key ("Num Cpus"); editors would show them instead of descriptions
        if key in ("properties", "$defs"):
            out[key] = {name: _for_toml(sub) for name, sub in value.items()}
        elif key in ("additionalProperties", "items") and isinstance(value, dict):
            out[key] = _with_env(_for_toml(value))
        else:
            out[key] = _for_toml(value)
    if "properties" in out:
        out["properties"] = {name: _with_env(sub) for name, sub in out["properties"].items()}
    return out


def _without_null(node: dict) -> dict:
    """`anyOf [T, null]` (an optional key) as T, keeping the key's description; a null default is no default."""
    branches = node.get("anyOf")
    if branches and {"type": "null"} in branches:
        rest = [b for b in branches if b != {"type": "null"}]
        node = {k: v for k, v in node.items() if k != "anyOf"}
        if len(rest) == 1:
            node = {**rest[0], **node}
        else:
            node["anyOf"] = rest
    if "default" in node and node["default"] is None:
        node = {k: v for k, v in node.items() if k != "default"}
    return node


def _named_tables(node: dict) -> dict:
    """A dict keyed by a name pattern (`deployments`): the pattern checks every key and the value schema applies to
    every table, where `patternProperties` would let a misnamed table through unchecked."""
    patterns = node.get("patternProperties")
    if not patterns or len(patterns) != 1 or "additionalProperties" in node:
        return node
    [(pattern, value)] = patterns.items()
    node = {k: v for k, v in node.items() if k != "patternProperties"}
    return {**node, "propertyNames": {"pattern": pattern}, "additionalProperties": value}


def _with_env(node: dict) -> dict:
    """A scalar that a `${VAR}` string may stand for: its own schema or an environment reference."""
    if "const" in node or "$ref" in node:
        return node
    constrained_string = node.get("type") == "string" and ("enum" in node or "pattern" in node)
    if node.get("type") not in _SCALARS and not constrained_string and "enum" not in node:
        return node
    annotations = {k: v for k, v in node.items() if k in _ANNOTATIONS}
    value = {k: v for k, v in node.items() if k not in _ANNOTATIONS}
    return {**annotations, "anyOf": [value, {"$ref": f"#/$defs/{_ENV_DEF}"}]}


def schema_text() -> str:
    """The schema as the file `aana schema` writes: indented JSON and a final newline."""
    return json.dumps(spec_json_schema(), indent=2, ensure_ascii=False) + "\n"
