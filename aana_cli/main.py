"""The `aana` command: each command parses its options, calls into `runtime`, renders, and picks the exit code.

Exit codes: 0 success; 1 the spec or the deployment failed (the message says why); 2 bad command-line usage.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import typer
from rich.markup import escape

from aana_cli import console
from aana_cli.options import Address, Host, Json, Port, SpecPath
from runtime.engines.registry import ENGINES, missing_packages
from runtime.launcher import LaunchError
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
) -> None:
    """Deploy the spec on Ray Serve and serve until Ctrl-C."""
    from runtime import launcher

    plan = _load(spec).with_server(host, port)
    address = address or plan.ray_address
    problems = launcher.preflight(plan, embedded=address is None) + [str(p) for p in local_path_problems(plan)]
    if problems:
        _fail(problems)
    serving = False
    try:
        with console.err.status("starting Ray" if address is None else f"connecting to Ray at {address}"):
            launcher.start_ray(plan, address)
        # After ray.init, which installs handlers of its own: `kill` and Ctrl-C both stop cleanly, also when the
        # parent shell started us with SIGINT ignored.
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)
        if problems := launcher.check_cluster(plan):
            _fail(problems)
        launcher.deploy(plan)
        with console.ProgressView() as view:
            launcher.wait_until_running(plan, timeout, view.update)
        console.ready_banner(plan)
        serving = True
        threading.Event().wait()
    except LaunchError as exc:
        _fail([str(exc)])
    except KeyboardInterrupt:
        console.err.print("stopping ..." if serving else "interrupted before the app was ready; stopping ...")
        if not serving:
            raise typer.Exit(130) from None
    finally:
        launcher.shutdown(plan, owned=address is None)
        console.err.print("stopped")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _fail(problems: list[str]) -> None:
    for problem in problems:
        console.error(problem)
    raise typer.Exit(1)


if __name__ == "__main__":
    app()
