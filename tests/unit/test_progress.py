"""What `aana up` shows while an app deploys: status changes as log lines, and the live table's notes."""

from __future__ import annotations

from rich.console import Console

from aana_cli.console import progress_table
from runtime.cluster import DeploymentProgress, Progress, StatusChanges


def progress(elapsed_s: float, *deployments: DeploymentProgress) -> Progress:
    return Progress("DEPLOYING", elapsed_s, list(deployments))


def test_a_line_per_status_and_per_startup_step_not_per_second_of_a_step():
    changes = StatusChanges()
    seen = []
    for elapsed, step, step_s, status in [
        (0.0, "", 0.0, "UPDATING"),
        (1.0, "importing torch and transformers", 0.5, "UPDATING"),
        (2.0, "importing torch and transformers", 1.5, "UPDATING"),
        (3.0, "loading the weights (538 MB) on cpu", 0.2, "UPDATING"),
        (4.5, "warming up (one token through the batch)", 0.1, "UPDATING"),
        (5.0, "", 0.0, "HEALTHY"),
    ]:
        seen += changes.lines(progress(elapsed, DeploymentProgress("m", status, step=step, step_s=step_s)))
    assert seen == [
        "[  0.0 s] m: UPDATING",
        "[  1.0 s] m: UPDATING, importing torch and transformers",
        "[  3.0 s] m: UPDATING, loading the weights (538 MB) on cpu",
        "[  4.5 s] m: UPDATING, warming up (one token through the batch)",
        "[  5.0 s] m: HEALTHY",
    ]


def test_the_live_table_notes_the_step_and_how_long_it_has_taken():
    pinned = Console(width=120, record=True, color_system=None)
    loading = DeploymentProgress(
        "m", "UPDATING", {"STARTING": 1}, step="loading the weights (538 MB) on cpu", step_s=3.2
    )
    pinned.print(progress_table(progress(7.0, loading, DeploymentProgress("other", "HEALTHY", {"RUNNING": 1}))))
    text = pinned.export_text()
    assert "loading the weights (538 MB) on cpu for 3 s" in text
    assert "1 starting" in text and "1 running" in text
