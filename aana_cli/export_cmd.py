"""`aana export`: the spec as a Ray Serve config or a KubeRay RayService manifest, on stdout or in a file."""

from __future__ import annotations

from pathlib import Path

import typer

from aana_cli import console
from runtime.export import Format, export

_NEXT_STEP = {
    "serve": "deploy it with `serve deploy {file} --address http://HEAD:8265`",
    "rayservice": "replace the image placeholder, then `kubectl apply -f {file}`",
}


def run(spec: Path, fmt: Format, output: Path | None, host: str | None, port: int | None) -> None:
    """Raises SpecError (the command boundary renders it); a file that cannot be written exits 1."""
    exported = export(spec, fmt, host, port)
    for warning in exported.warnings:
        console.warning(warning)
    if output is None:
        typer.echo(exported.text, nl=False)  # plain: the YAML must reach a pipe byte for byte
        return
    try:
        output.write_text(exported.text, encoding="utf-8")
    except OSError as exc:
        console.error(f"cannot write {output}: {exc.strerror or exc}", hint="choose another -o path")
        raise typer.Exit(1) from None
    console.err.print(
        f"wrote {console.escape(str(output))}; {console.escape(_NEXT_STEP[fmt].format(file=output))}", soft_wrap=True
    )
