"""The `aana` command: each command parses its options, calls into `runtime`, renders, and picks the exit code.

Exit codes: 0 success; 1 the spec or the deployment failed (the message says why); 2 bad command-line usage
(`aana status` and `aana down` also use 2 for "nothing running" and 3 for "cluster unreachable").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from aana_cli import console, serve_cmds
from aana_cli.options import Address, DatabaseUrl, DrainTimeout, Host, Json, Port, SpecPath
from runtime.engines.registry import ENGINES, missing_packages
from runtime.plan import AppPlan, build_plan, local_path_problems
from runtime.spec import SpecError, load_spec

app = typer.Typer(
    name="aana",
    help="Serve LLMs from a TOML spec as an OpenAI-compatible API on Ray Serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _load(path: Path) -> AppPlan:
    try:
        spec = load_spec(path)
        return build_plan(spec, base_dir=path.parent, source=str(path))
    except SpecError as exc:
        console.error(str(exc), hint="fix the keys above; `aana validate SPEC` checks a spec without starting anything")
        raise typer.Exit(1) from None


@app.command()
def validate(spec: SpecPath, as_json: Json = False) -> None:
    """Check a spec and print the deployment plan. Exit 0 when valid, 1 when not."""
    plan = _load(spec)
    for d in plan.deployments:
        if missing := missing_packages(d.engine):
            console.warning(
                f"deployment {d.model_id!r}: engine {d.engine!r} needs {', '.join(missing)}, not installed here "
                f"(`aana up` will refuse); install it: {ENGINES[d.engine].install_hint}"
            )
    for problem in local_path_problems(plan):
        console.warning(str(problem))
    from runtime.launcher import engine_arg_problems

    if problems := engine_arg_problems(plan):
        for problem in problems:
            console.error(problem)
        raise typer.Exit(1)
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
                "num_cpus": d.num_cpus,
                "num_gpus": d.num_gpus,
                "max_model_len": d.max_model_len,
                "sampling": d.sampling,
                "options": d.options,
                "engine_args": d.engine_args,
            }
            for d in plan.deployments
        ],
    }


@app.command()
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
    plan = _load(spec).with_server(host, port)
    options = serve_cmds.UpOptions(address or plan.ray_address, timeout, drain_timeout)
    if detach:
        child_args = [str(spec.resolve()), "--timeout", str(timeout), "--drain-timeout", str(drain_timeout)]
        child_args += ["--port", str(plan.port), "--host", plan.host]
        child_args += ["--address", options.address] if options.address else []
        child_args += ["--database-url", database_url] if database_url else []
        child_args += ["--migrate"] if migrate else []
        serve_cmds.up_detached(plan, child_args, options)
    else:
        serve_cmds.up_foreground(plan, options, spec, database_url, migrate)


@app.command()
def down(
    app_name: Optional[str] = typer.Option(None, "--app", help="The app to stop (default: the only one running)."),
    address: Address = None,
    drain_timeout: DrainTimeout = 30.0,
) -> None:
    """Stop an app gracefully: refuse new requests, let those in flight finish, remove it, stop the Ray aana started."""
    serve_cmds.down(app_name, address, drain_timeout)


@app.command()
def migrate(
    database_url: DatabaseUrl = None,
    spec: Optional[Path] = typer.Option(None, "--spec", help="Use this spec's database.url.", exists=True, dir_okay=False),
    to: Optional[str] = typer.Option(None, "--to", help="Go up or down to this revision (e.g. 0002, base, head)."),
    show_status: bool = typer.Option(False, "--status", help="Show current, newest and pending revisions; exit 1 when behind."),
    print_sql: bool = typer.Option(False, "--sql", help="Print the SQL instead of running it."),
) -> None:
    """Bring the database to the current schema (Alembic). SQLite file by default, PostgreSQL by URL.

    The database is --database-url, else $AANA_DATABASE_URL, else the spec's database.url, else a SQLite file in the
    user's data directory.
    """
    from aana_cli import migrate_cmd

    migrate_cmd.run(database_url, spec, to, show_status, print_sql)


@app.command()
def status(address: Address = None, as_json: Json = False, database_url: DatabaseUrl = None) -> None:
    """Show what runs: cluster, apps, deployments, replicas, errors, endpoint and models.

    Exit codes: 0 all healthy, 1 something unhealthy or still deploying, 2 nothing running, 3 cluster unreachable.
    """
    serve_cmds.status(address, as_json, database_url)


if __name__ == "__main__":
    app()
