"""The domain errors of starting, finding and stopping apps. Each message names the fix; each type carries the exit
code the CLI turns it into (spec problems are `runtime.spec.SpecError`, exit 1)."""

from __future__ import annotations


class LaunchError(Exception):
    """`aana up`, `aana down` or `aana status` cannot go on; each problem says why and what to do."""

    exit_code = 1

    def __init__(self, problem: str, *more: str):
        self.problems = [problem, *more]
        super().__init__("\n".join(self.problems))


class NothingRunning(LaunchError):
    """No app (or no cluster) to act on."""

    exit_code = 2


class Ambiguous(LaunchError):
    """Several apps could be meant; the message says which flag picks one."""

    exit_code = 2


class Unreachable(LaunchError):
    """No Ray cluster answers at the address."""

    exit_code = 3


class Interrupted(LaunchError):
    """Ctrl-C or SIGTERM before the app was ready."""

    exit_code = 130
