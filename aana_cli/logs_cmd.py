"""`aana logs`: an app's replica and ingress logs from any terminal, each line prefixed with its model's name.

Finding and reading the logs is `runtime.logs` (through each Ray node's own log service); this module parses the
options, prints, and picks the exit code: 0 done (and after Ctrl-C while following), 1 the app has no such model,
2 nothing running (or several apps: name one), 3 cluster unreachable (or no node's log service answers).
"""

from __future__ import annotations

import re
import signal
from datetime import datetime, timedelta
from typing import Optional

import typer
from rich.text import Text

from aana_cli import console
from aana_cli.help_text import RUN_PANEL, epilog
from runtime.errors import LaunchError

EPILOG = epilog(
    [
        ("aana logs", "every replica of the only app running"),
        ("aana logs --model smollm2 --since 10m", "one model, the last ten minutes"),
        ("aana logs -f", "keep printing new lines until Ctrl-C"),
        ("aana logs --app chat --address auto -f", "an app on a running Ray cluster"),
    ],
    [
        (0, "done (also after Ctrl-C with --follow)"),
        (1, "the app has no such model"),
        (2, "nothing running, or several apps: name one"),
        (3, "cluster unreachable, or no node's log service answers"),
    ],
)

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
# Colours that read on dark and light terminals, one per deployment in the order they appear.
_PALETTE = ("cyan", "magenta", "green", "yellow", "blue", "bright_red")


def parse_since(text: str, now: datetime) -> datetime:
    """A duration back from now (90s, 10m, 2h, 1d) or a local date or time (2025-06-01, 2025-06-01T12:00), as the
    naive local time the log lines carry."""
    if match := _DURATION.match(text):
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is neither a duration (90s, 10m, 2h, 1d) nor a local time (2025-06-01T12:00)",
            param_hint="'--since'",
        ) from None
    return moment.astimezone().replace(tzinfo=None) if moment.tzinfo else moment


class Printer:
    """One line per log line: `model | line`, the name padded to the widest and coloured on a terminal."""

    def __init__(self, deployments: list[str]):
        self.width = max((len(d) for d in deployments), default=0)
        self.colours = {d: _PALETTE[i % len(_PALETTE)] for i, d in enumerate(deployments)}

    def __call__(self, deployment: str, text: str) -> None:
        line = Text(deployment.ljust(self.width), style=self.colours.get(deployment, ""))
        line.append(" | ", style="dim")
        line.append(text)
        console.out.print(line, soft_wrap=True)


def run(app_name: str | None, model: str | None, follow: bool, since: str | None, address: str | None) -> None:
    from runtime.logs import app_logs

    start = parse_since(since, datetime.now()) if since else None
    # Ctrl-C (SIGINT) is how following ends, also when the parent shell started us with SIGINT ignored (`cmd &`).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with app_logs(app_name, address, model) as logs:
            printer = Printer(logs.deployments)
            if follow:
                console.err.print(f"[dim]following {console.escape(logs.app)}; Ctrl-C stops[/]")
                lines = logs.follow(start)
            else:
                lines = iter(logs.read(start)[0])
            try:
                for line in lines:
                    printer(line.deployment, line.text)
            except KeyboardInterrupt:
                pass  # the way to stop following: exit 0
            finally:
                close = getattr(lines, "close", None)
                if close is not None:
                    close()  # cancels the streams
            for warning in logs.warnings:
                console.warning(warning)
    except BrokenPipeError:  # `aana logs | head`: the reader has what it wanted
        raise typer.Exit(0) from None
    except KeyboardInterrupt:  # before the first line: still looking for the app
        raise typer.Exit(130) from None
    except LaunchError as exc:
        for problem in exc.problems:
            console.error(problem)
        raise typer.Exit(exc.exit_code) from None


def register(app: typer.Typer) -> None:
    """Add `aana logs` to the command-line app."""

    @app.command(rich_help_panel=RUN_PANEL, epilog=EPILOG)
    def logs(
        app_name: Optional[str] = typer.Option(None, "--app", help="The app (default: the only one running)."),
        model: Optional[str] = typer.Option(
            None, "--model", "-m", help="Only this model's replicas (or OpenAIIngress, the separate HTTP front)."
        ),
        follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines until Ctrl-C."),
        since: Optional[str] = typer.Option(
            None, "--since", help="Only lines from this long ago (90s, 10m, 2h, 1d) or this local time."
        ),
        address: Optional[str] = typer.Option(
            None,
            "--address",
            help="Ray cluster of the app (`auto`, `host:6379`); default: where this machine's `aana up` runs it, "
            "else `auto`.",
        ),
    ) -> None:
        """Print the logs of an app's replicas (models and ingress), each line prefixed with its model.

        Read through each Ray node's own log service: no dashboard needed, every node, stopped replicas too.
        This machine must reach each node's Ray agent port; a node it cannot reach is named in a warning.
        """
        run(app_name, model, follow, since, address)
