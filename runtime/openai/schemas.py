"""JSON Schemas for constrained decoding, checked at the edge: a schema is valid JSON Schema (jsonschema's own
metaschema check) and uses only keywords the grammar engine (xgrammar, on both engines) enforces.

xgrammar compiles many keywords it cannot enforce with a log warning and no error (`not`, `if`, `uniqueItems`,
`multipleOf`, `pattern` beside `maxLength` ...): the model's output would then break the schema the client asked
for. Such a keyword is a 400 naming it and where it is instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from runtime.openai.errors import APIError

# Keywords that change nothing about the text, or that the grammar enforces.
_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$schema", "$id", "$comment", "$anchor", "deprecated",
     "readOnly", "writeOnly"}
)  # fmt: skip
_ENFORCED = frozenset(
    {"type", "properties", "required", "additionalProperties", "items", "prefixItems", "enum", "const", "anyOf",
     "oneOf", "$ref", "$defs", "definitions", "minItems", "maxItems", "minLength", "maxLength", "pattern", "format",
     "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minProperties", "maxProperties"}
)  # fmt: skip
# The string formats xgrammar turns into a grammar (others would be ignored).
_FORMATS = frozenset(
    {"email", "date", "time", "date-time", "duration", "ipv4", "ipv6", "hostname", "uuid", "uri", "uri-reference",
     "uri-template", "json-pointer", "relative-json-pointer"}
)  # fmt: skip
# Keywords whose value is a schema, a list of schemas, or a map of names to schemas.
_ONE_SCHEMA = ("items", "additionalProperties")
_SCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "$defs", "definitions")
MAX_SCHEMA_DEPTH = 64


def check_schema(schema: Any, param: str) -> None:
    """Raise a 400 (naming `param` and the keyword's path) unless `schema` is a JSON Schema the grammar enforces."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    if not isinstance(schema, dict):
        raise APIError(400, f"{param} must be a JSON Schema object", param=param)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(part) for part in exc.path) or "the top level"
        raise APIError(400, f"{param} is not a valid JSON Schema at {where}: {exc.message}", param=param) from None
    except RecursionError:
        raise APIError(400, f"{param} is nested too deeply", param=param) from None
    for path, keyword, value in _keywords(schema, "#", 0, param):
        problem = _unsupported(keyword, value, path)
        if problem:
            raise APIError(400, f"{param}: {problem}; remove it or express the constraint differently", param=param)


def _keywords(schema: dict[str, Any], path: str, depth: int, param: str) -> Iterator[tuple[str, str, Any]]:
    if depth > MAX_SCHEMA_DEPTH:
        raise APIError(400, f"{param} is nested more than {MAX_SCHEMA_DEPTH} levels deep", param=param)
    for keyword, value in schema.items():
        yield path, keyword, value
        if keyword in _ONE_SCHEMA and isinstance(value, dict):
            yield from _keywords(value, f"{path}/{keyword}", depth + 1, param)
        elif keyword in _SCHEMA_LISTS and isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    yield from _keywords(item, f"{path}/{keyword}/{i}", depth + 1, param)
        elif keyword in _SCHEMA_MAPS and isinstance(value, dict):
            for name, item in value.items():
                if isinstance(item, dict):
                    yield from _keywords(item, f"{path}/{keyword}/{name}", depth + 1, param)
    if ("pattern" in schema or "format" in schema) and ("minLength" in schema or "maxLength" in schema):
        yield path, "pattern+length", None


def _unsupported(keyword: str, value: Any, path: str) -> str | None:
    if keyword == "pattern+length":
        return f"a pattern or format together with minLength/maxLength (at {path}) cannot be enforced together"
    if keyword == "format" and value not in _FORMATS:
        return f'format "{value}" (at {path}) cannot be enforced; supported formats: {", ".join(sorted(_FORMATS))}'
    if keyword == "$ref" and not str(value).startswith("#"):
        return f"$ref {value!r} (at {path}) points outside the schema; only local references (#/...) are supported"
    if keyword not in _ENFORCED and keyword not in _ANNOTATIONS:
        return f"the keyword {keyword!r} (at {path}) cannot be enforced by constrained decoding"
    return None
