"""Options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

SpecPath = Annotated[
    Path,
    typer.Argument(help="The app spec (TOML).", exists=True, dir_okay=False, readable=True, show_default=False),
]
Address = Annotated[
    Optional[str],
    typer.Option(
        "--address",
        help="Ray cluster to use (`auto` or `ray://host:10001`); default: the spec's ray.address, else an embedded "
        "local Ray.",
    ),
]
Host = Annotated[Optional[str], typer.Option("--host", help="Override server.host.")]
Port = Annotated[Optional[int], typer.Option("--port", min=1, max=65535, help="Override server.port.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of tables.")]
DrainTimeout = Annotated[
    float,
    typer.Option("--drain-timeout", min=0, help="Seconds to let requests in flight finish when stopping."),
]
DatabaseUrl = Annotated[
    Optional[str],
    typer.Option(
        "--database-url",
        help="SQLAlchemy URL of the aana database (default: $AANA_DATABASE_URL, the spec's database.url, or a SQLite "
        "file in the user's data directory).",
    ),
]
