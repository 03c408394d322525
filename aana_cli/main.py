"""The `aana` command: each command parses its options, calls into `runtime`, renders, and picks the exit code.

Exit codes: 0 success; 1 the spec is invalid, `aana up` failed or the database said no (the message says why); 2 bad
command-line usage (`aana status` and `aana down` also use 2 for "nothing running" and 3 for "cluster unreachable").
Each command's --help ends with examples and its own exit codes (`aana_cli.help_text.EPILOGS`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, Optional

import typer
from rich.markup import escape

from aana_cli import console
from aana_cli.help_text import DATA_PANEL, EPILOGS, RUN_PANEL, SPEC_PANEL
from aana_cli.options import Address, DatabaseUrl, DrainTimeout, Host, Json, Port, SpecPath
from runtime import detached, lifecycle
from runtime.errors import Interrupted, LaunchError
from runtime.export import Format
from runtime.plan import AppPlan, load_plan, local_path_problems
from runtime.preflight import engine_args_problems, missing_package_problems
from runtime.spec import ENGINE_NAMES, SpecError

app = typer.Typer(
    name="aana",
    help="Serve LLMs from a TOML spec as an OpenAI-compatible API on Ray Serve.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    epilog=EPILOGS["aana"],
)

_SPEC_HINT = "fix the keys above; `aana validate SPEC` checks a spec without starting anything"


@contextmanager
def _exit_codes(as_json: bool = False) -> Iterator[None]:
    """The command boundary: domain errors become messages on stderr (or a JSON error) and their exit codes."""
    try:
        yield
    except SpecError as exc:
        console.error(str(exc), hint=_SPEC_HINT)
        raise typer.Exit(1) from None
    except LaunchError as exc:
        if as_json:
            console.out.print_json(json.dumps({"error": str(exc), "exit_code": exc.exit_code}))
        elif not isinstance(exc, Interrupted):  # an interrupt was already reported as it happened
            for problem in exc.problems:
                console.error(problem)
        raise typer.Exit(exc.exit_code) from None


EngineName = Literal[ENGINE_NAMES]  # the registry's engines, as the choices of --engine


@app.command(rich_help_panel=SPEC_PANEL, epilog=EPILOGS["init"])
def init(
    path: Path = typer.Argument(Path("aana.toml"), help="Where to write the spec.", dir_okay=False, metavar="PATH"),
    engine: EngineName = typer.Option(
        "transformers", "--engine", "-e", metavar="ENGINE", help=f"The engine: {', '.join(ENGINE_NAMES)}."
    ),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        "-m",
        help="A Hugging Face id, local folder, .gguf file or pkg:<package>/<file> (default: the embedded SmolLM2, "
        "or MiniLM for sentence_transformers; echo needs none). The deployment is named after it.",
    ),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite the spec (and a schema file in the way)."),
    schema: Optional[str] = typer.Option(
        None,
        "--schema",
        help="Where the #:schema line points: a path, relative to the spec (the schema is written there), or a URL "
        "(nothing written). Default: aana.schema.json beside the spec.",
    ),
) -> None:
    """Write a commented starter spec, and its JSON Schema beside it for editors.

    Every optional key is there, commented out at its default; taplo (Even Better TOML) reads the #:schema line.
    """
    from aana_cli import init_cmd

    with _exit_codes():
        init_cmd.init(path, engine, model, force, schema)


@app.command(rich_help_panel=SPEC_PANEL, epilog=EPILOGS["schema"])
def schema(
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", dir_okay=False, help="Write the schema here instead of to stdout."
    ),
) -> None:
    """Print the spec's JSON Schema (descriptions, defaults, enums, bounds), from the models `aana validate` uses."""
    from aana_cli import init_cmd

    init_cmd.write_schema(output)


@app.command(rich_help_panel=SPEC_PANEL, epilog=EPILOGS["validate"])
def validate(spec: SpecPath, as_json: Json = False) -> None:
    """Check a spec and print the deployment plan."""
    with _exit_codes():
        plan = load_plan(spec)
        for problem in missing_package_problems(plan) + [str(p) for p in local_path_problems(plan)]:
            console.warning(problem)
        if problems := engine_args_problems(plan):
            raise LaunchError(*problems)
    if as_json:
        console.out.print_json(json.dumps(_plan_json(plan), default=str))
    else:
        console.out.print(console.plan_table(plan))
        console.out.print(f"[green]valid[/]: {escape(str(spec))}")


def _plan_json(plan: AppPlan) -> dict:
    return {
        "app": plan.app_name,
        "base_url": plan.base_url,
        "deployments": [
            {
                "model": d.model_id,
                "engine": d.engine,
                "source": {"kind": d.source.kind, "location": d.source.location},
                "num_replicas": d.num_replicas,
                "autoscaling": d.autoscaling.model_dump() if d.autoscaling else None,
                "num_cpus": d.num_cpus,
                "num_gpus": d.num_gpus,
                "max_model_len": d.max_model_len,
                "sampling": d.sampling.model_dump(exclude_none=True),
                "options": d.options.model_dump(),
                "engine_args": d.engine_args,
            }
            for d in plan.deployments
        ],
    }


@app.command(rich_help_panel=RUN_PANEL, epilog=EPILOGS["up"])
def up(
    spec: SpecPath,
    address: Address = None,
    host: Host = None,
    port: Port = None,
    timeout: float = typer.Option(900.0, "--timeout", min=1, help="Seconds to wait for every model to load."),
    detach: bool = typer.Option(False, "--detach", "-d", help="Return once serving; the app keeps running."),
    drain_timeout: DrainTimeout = 30.0,
    database_url: DatabaseUrl = None,
    migrate: bool = typer.Option(False, "--migrate", help="Bring the database up to date first (aana migrate)."),
) -> None:
    """Deploy the spec on Ray Serve and serve until Ctrl-C (or, with --detach, until `aana down`)."""
    request = lifecycle.UpRequest(str(spec), address, host, port, timeout, drain_timeout, database_url, migrate)
    observer = console.ConsoleObserver()
    try:
        with _exit_codes():
            if detach:
                observer.serving(detached.up_detached(request, observer, _child_command()))
            else:
                lifecycle.up(request, observer)
    finally:
        observer.close()


def _child_command() -> list[str]:
    """How a detached `aana up` starts its child: this `aana` script (beside this Python), never `python -m`."""
    script = Path(sys.executable).parent / "aana"
    return [str(script) if script.exists() else "aana", "detached-child"]


@app.command("detached-child", hidden=True)
def detached_child() -> None:
    """The background process of `aana up --detach` (internal)."""
    raise typer.Exit(detached.child_main())


@app.command(rich_help_panel=RUN_PANEL, epilog=EPILOGS["down"])
def down(
    app_name: Optional[str] = typer.Option(None, "--app", help="The app to stop (default: the only one running)."),
    address: Address = None,
    drain_timeout: DrainTimeout = 30.0,
) -> None:
    """Stop an app gracefully: refuse new requests, let those in flight finish, remove it, stop the Ray aana started."""
    with _exit_codes():
        name = lifecycle.down(app_name, address, drain_timeout, console.ConsoleObserver())
    console.out.print(f"stopped {name}")


@app.command(rich_help_panel=DATA_PANEL, epilog=EPILOGS["migrate"])
def migrate(
    database_url: DatabaseUrl = None,
    spec: Optional[Path] = typer.Option(
        None, "--spec", help="Use this spec's database.url.", exists=True, dir_okay=False
    ),
    to: Optional[str] = typer.Option(None, "--to", help="Go up or down to this revision (e.g. 0002, base, head)."),
    show_status: bool = typer.Option(
        False, "--status", help="Show current, newest and pending revisions; exit 1 when behind."
    ),
    print_sql: bool = typer.Option(False, "--sql", help="Print the SQL instead of running it."),
) -> None:
    """Bring the database to the current schema (Alembic). SQLite file by default, PostgreSQL by URL.

    The database is --database-url, else $AANA_DATABASE_URL, else the spec's database.url, else a SQLite file in the
    user's data directory.
    """
    from aana_cli import migrate_cmd

    migrate_cmd.run(database_url, spec, to, show_status, print_sql)


keys_app = typer.Typer(
    name="keys",
    help="API keys, one per person or service: which models each may use, how fast, until when.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    epilog=EPILOGS["keys"],
)
app.add_typer(keys_app, rich_help_panel=DATA_PANEL)


@keys_app.command("create", epilog=EPILOGS["keys create"])
def keys_create(
    name: str = typer.Option(..., "--name", help="Who the key is for; unique (revoked keys keep their names)."),
    models: Optional[str] = typer.Option(
        None, "--models", help="Comma-separated models the key may use (default: every model)."
    ),
    rpm: Optional[int] = typer.Option(None, "--rpm", min=1, help="Requests per minute (default: no limit)."),
    tpm: Optional[int] = typer.Option(None, "--tpm", min=1, help="Tokens per minute (default: no limit)."),
    expires: Optional[str] = typer.Option(None, "--expires", help="Lifetime: 30d, 12h or 90m (default: never)."),
    database_url: DatabaseUrl = None,
    as_json: Json = False,
) -> None:
    """Make a key and print it: the only time it is shown (the database keeps only its hash)."""
    from aana_cli import keys_cmd

    keys_cmd.create(database_url, name, models, rpm, tpm, expires, as_json)


@keys_app.command("list", epilog=EPILOGS["keys list"])
def keys_list(database_url: DatabaseUrl = None, as_json: Json = False) -> None:
    """Show every key: name, prefix, models, limits, dates and state (active, expired, revoked); never the key."""
    from aana_cli import keys_cmd

    keys_cmd.list_(database_url, as_json)


@keys_app.command("revoke", epilog=EPILOGS["keys revoke"])
def keys_revoke(
    key: str = typer.Argument(..., metavar="NAME|PREFIX", help="The key's name or its prefix (aana-xxxxxxxx)."),
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke a key: servers refuse it within seconds. Its usage stays, and its name stays taken."""
    from aana_cli import keys_cmd

    keys_cmd.revoke(database_url, key)


@app.command(rich_help_panel=DATA_PANEL, epilog=EPILOGS["usage"])
def usage(
    since: str = typer.Option("7d", "--since", help="From this long ago (7d, 12h, 90m) or this UTC date (2025-06-01)."),
    key: Optional[str] = typer.Option(
        None, "--key", help="Only this key (name or prefix); `-` for requests made without a key."
    ),
    model: Optional[str] = typer.Option(None, "--model", help="Only this model."),
    as_json: Json = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Requests, errors and tokens per key, model and UTC day, with totals, from the recorded requests."""
    from aana_cli import keys_cmd

    keys_cmd.usage(database_url, since, key, model, as_json)


@app.command(rich_help_panel=SPEC_PANEL, epilog=EPILOGS["export"])
def export(
    spec: SpecPath,
    fmt: Format = typer.Option(
        "serve",
        "--format",
        help="serve: a Ray Serve config for `serve deploy`; rayservice: a KubeRay RayService manifest embedding it.",
    ),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", dir_okay=False, help="Write the file here instead of to stdout."
    ),
    host: Host = None,
    port: Port = None,
) -> None:
    """Write the spec for a production Ray cluster; `${VAR}` references stay references, resolved on the cluster."""
    from aana_cli import export_cmd

    with _exit_codes():
        export_cmd.run(spec, fmt, output, host, port)


@app.command(rich_help_panel=RUN_PANEL, epilog=EPILOGS["status"])
def status(address: Address = None, as_json: Json = False, database_url: DatabaseUrl = None) -> None:
    """Show what runs: cluster, apps, deployments, replicas, errors, endpoint and models."""
    from runtime.status import exit_code

    with _exit_codes(as_json):
        snapshot = lifecycle.status(address, database_url, console.ConsoleObserver())
    if as_json:
        console.out.print_json(json.dumps(snapshot))
    else:
        console.status_view(snapshot)
    raise typer.Exit(exit_code(snapshot))


from aana_cli import chat_cmd, logs_cmd  # noqa: E402

logs_cmd.register(app)
chat_cmd.register(app)


if __name__ == "__main__":
    app()
