"""`aana init` and `aana schema`: a commented starter spec with its JSON Schema beside it, and the schema alone.

`aana init` writes the schema file where the spec's `#:schema` line points (`aana.schema.json` beside the spec unless
--schema names another path; a URL is only referred to), so an editor with taplo (Even Better TOML) completes and
checks the spec at once, and rewrites that file when it is an earlier aana schema: it is generated, and a stale one
would flag keys this aana knows. Exit codes: 0 written; 1 a file is in the way (--force overwrites it) or cannot be
written; 2 bad usage.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from aana_cli import console
from runtime.spec import parse_spec
from runtime.spec_schema import SCHEMA_TITLE, schema_text
from runtime.starter import starter_spec

SCHEMA_FILE = "aana.schema.json"


def init(path: Path, engine: str, model: str | None, force: bool, schema: str | None) -> None:
    """Raises SpecError (a bug: the starter must validate) for the command boundary to render."""
    schema_file, reference = _schema_target(path, schema)
    _refuse_to_clobber(path, force, "the spec")
    if schema_file is not None and not _is_aana_schema(schema_file):
        _refuse_to_clobber(schema_file, force, "the schema file")
    text = starter_spec(engine, model, reference)
    parse_spec(text, source=str(path), environ={})  # never write a spec that `aana validate` would refuse
    if schema_file is not None:
        _write(schema_file, schema_text())
    _write(path, text)
    beside = f" and {schema_file}" if schema_file is not None else ""
    console.err.print(f"wrote {console.escape(str(path))}{console.escape(beside)}", soft_wrap=True)
    console.err.print(
        f"next: aana validate {console.escape(str(path))}, then aana up {console.escape(str(path))}", soft_wrap=True
    )


def write_schema(output: Path | None) -> None:
    text = schema_text()
    if output is None:
        typer.echo(text, nl=False)  # plain: a pipe gets the JSON byte for byte
        return
    _write(output, text)
    console.err.print(f"wrote {console.escape(str(output))}", soft_wrap=True)


def _schema_target(spec: Path, schema: str | None) -> tuple[Path | None, str]:
    """The schema file to write (None for a URL) and the reference the `#:schema` line holds: editors resolve a
    relative one against the spec's folder, so a path is written relative to it."""
    if schema is not None and "://" in schema:
        return None, schema
    target = Path(schema) if schema is not None else spec.parent / SCHEMA_FILE
    try:
        relative = Path(os.path.relpath(target.resolve(), spec.resolve().parent)).as_posix()
    except ValueError:  # another drive (Windows): only an absolute reference reaches it
        return target, target.resolve().as_uri()
    return target, relative if relative.startswith("../") else f"./{relative}"


def _refuse_to_clobber(path: Path, force: bool, what: str) -> None:
    if path.is_dir():
        console.error(f"{path} is a directory", hint=f"name a file for {what}")
        raise typer.Exit(1)
    if path.exists() and not force:
        console.error(f"{path} exists; aana init does not overwrite it", hint="pass --force to replace it")
        raise typer.Exit(1)


def _is_aana_schema(path: Path) -> bool:
    """An earlier `aana schema` output (safe to regenerate), or no file at all."""
    if not path.exists():
        return True
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("title") == SCHEMA_TITLE
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        console.error(f"cannot write {path}: {exc.strerror or exc}", hint="choose another path")
        raise typer.Exit(1) from None
