"""Rich rendering for the commands: the plan summary, deploy progress, the ready banner, status, and errors.

Results a script may read go to stdout; progress, warnings and errors go to stderr. `ConsoleObserver` renders what
`runtime.lifecycle` reports while an app starts, serves and stops.
"""

from __future__ import annotations

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.status import Status
from rich.table import Table

from runtime.cluster import Progress, StatusChanges
from runtime.lifecycle import Serving
from runtime.plan import AppPlan
from runtime.status import SERVING

__all__ = ["err", "escape", "out"]

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def error(message: str, hint: str | None = None) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    if hint:
        err.print(f"[dim]{escape(hint)}[/]", soft_wrap=True)


def warning(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


def plan_table(plan: AppPlan) -> Table:
    """One block per deployment, key/value rows: readable at 80 columns, unlike a wide table."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    grid.add_row(f"app {escape(plan.app_name)}", f"{plan.base_url}/v1")
    for d in plan.deployments:
        grid.add_row("", "")
        grid.add_row(f"[cyan]{escape(d.model_id)}[/]", f"engine {d.engine}")
        grid.add_row("  model", escape(d.source.describe()))
        replicas = (
            f"{d.num_replicas}-{d.max_replicas} replicas (autoscaled)"
            if d.autoscaling
            else f"{d.num_replicas} replica(s)"
        )
        grid.add_row("  resources", f"{replicas} x {d.num_cpus:g} CPU, {d.num_gpus:g} GPU")
        grid.add_row("  context", f"{d.max_model_len} tokens" if d.max_model_len else "the model's own")
        grid.add_row("  template", "the model's own" if d.chat_template is None else "from the spec")
        grid.add_row("  sampling", _pairs(d.sampling.model_dump(exclude_none=True)) or "engine defaults")
        options = {k: v for k, v in (d.options.model_dump() | d.engine_args).items() if v is not None}
        if options:
            grid.add_row("  options", _pairs(options))
    return grid


def _pairs(values: dict) -> str:
    return escape(" ".join(f"{k}={v}" for k, v in values.items()))


_STYLE = {
    "HEALTHY": "green", "RUNNING": "green", "UPDATING": "yellow", "DEPLOYING": "yellow", "UPSCALING": "yellow",
    "DOWNSCALING": "yellow", "NOT_STARTED": "yellow",
}  # fmt: skip


def progress_table(progress: Progress) -> Table:
    table = Table(title=f"deploying ({progress.app_status}, {progress.elapsed_s:.0f} s)", title_justify="left")
    for column in ("deployment", "status", "replicas", "note"):
        table.add_column(column)
    for d in progress.deployments:
        replicas = ", ".join(f"{n} {state.lower()}" for state, n in d.replicas.items()) or "-"
        style = _STYLE.get(d.status, "red")
        note = escape(d.message.strip().splitlines()[0][:100]) if d.message.strip() else ""
        if d.step:
            note = escape(f"{d.step} for {d.step_s:.0f} s") + (f" ({note})" if note else "")
        table.add_row(d.name, f"[{style}]{d.status}[/]", replicas, note)
    return table


class ConsoleObserver:
    """What `aana up` shows while it works: a spinner per step, a live deploy table on a terminal (one line per
    change elsewhere: logs, CI, pipes), notes and warnings on stderr, and the banner on stdout once serving."""

    def __init__(self) -> None:
        self.live: Live | None = None
        self.spinner: Status | None = None
        self.changes = StatusChanges()

    def close(self) -> None:
        if self.spinner is not None:
            self.spinner.stop()
            self.spinner = None
        if self.live is not None:
            self.live.__exit__(None, None, None)
            self.live = None

    def step(self, message: str) -> None:
        self.close()
        if err.is_terminal:
            self.spinner = err.status(escape(message))
            self.spinner.start()

    def info(self, message: str) -> None:
        self.close()
        err.print(escape(message), soft_wrap=True)

    def warning(self, message: str) -> None:
        self.close()
        warning(message)

    def progress(self, progress: Progress) -> None:
        if self.spinner is not None:
            self.close()
        if err.is_terminal:
            if self.live is None:
                self.live = Live(console=err, refresh_per_second=4, transient=True)
                self.live.__enter__()
            self.live.update(progress_table(progress))
            return
        for line in self.changes.lines(progress):
            err.print(line)

    def serving(self, serving: Serving) -> None:
        self.close()
        ready_banner(serving)


def ready_banner(serving: Serving) -> None:
    out.print(f"[bold green]aana is serving[/] app {serving.app} at {serving.base_url}/v1")
    out.print(f"models: {', '.join(serving.models)}")
    out.print(
        f"try: curl {serving.base_url}/v1/chat/completions -H 'Content-Type: application/json' "
        f'-d \'{{"model": "{serving.models[0]}", "messages": [{{"role": "user", "content": "Hello"}}]}}\'',
        soft_wrap=True,
    )
    if serving.pid is None:
        err.print("[dim]press Ctrl-C to stop[/]")
    else:
        err.print(
            f"running in the background (pid {serving.pid}, log {escape(serving.log or '-')}); stop it with `aana down`"
        )


def status_view(snapshot: dict) -> None:
    """The human view of `aana status`; the same facts as --json."""
    cluster = snapshot["cluster"]
    res = cluster["resources"]
    alive = sum(1 for n in cluster["nodes"] if n["alive"])
    gib = 1024**3
    out.print(
        f"[bold]cluster[/] {escape(cluster['address'])}: {alive}/{len(cluster['nodes'])} node(s) alive, "
        f"CPU {res['CPU']['used']:g}/{res['CPU']['total']:g}, GPU {res['GPU']['used']:g}/{res['GPU']['total']:g}, "
        f"memory {res['memory']['used'] / gib:.1f}/{res['memory']['total'] / gib:.1f} GiB",
        soft_wrap=True,
    )
    if not snapshot["apps"]:
        out.print("no apps are running")
    several_nodes = len(snapshot["cluster"]["nodes"]) > 1
    for app in snapshot["apps"]:
        out.print(_app_table(app))
        for d in app["deployments"] if several_nodes else ():  # on one node, where each replica runs says nothing
            where = ", ".join(_placed(r) for r in d["placement"])
            out.print(f"  {escape(d['name'])} on {escape(where or 'no node')}", soft_wrap=True)
        for d in app["deployments"]:
            if d["message"] and d["status"] != "HEALTHY":
                style = "yellow" if d["status"] in SERVING else "red"  # autoscaling says what it does: no failure
                out.print(f"  [{style}]{escape(d['name'])}: {escape(_last_line(d['message']))}[/]", soft_wrap=True)


def _app_table(app: dict) -> Table:
    style = _STYLE.get(app["status"], "red")
    title = f"app [bold]{escape(app['name'])}[/] [{style}]{app['status']}[/]"
    if app["deploying_for_s"] is not None:
        title += f" for {app['deploying_for_s']:.0f} s"
    if app["endpoint"]:
        title += f"  {escape(app['endpoint'])}"
    table = Table(title=title, title_justify="left")
    table.caption = (
        "replicas: running/target (min-max when autoscaled); last hour: requests/errors, TTFT and latency p50/p95 in ms"
    )
    for column in ("deployment", "status", "replicas", "req/err", "TTFT", "latency"):
        table.add_column(column, no_wrap=True, overflow="fold" if column == "deployment" else "ellipsis")
    requests = app.get("requests") or {}
    for d in app["deployments"]:
        stats = requests.get(d["name"]) if d["role"] == "model" else None
        cells = ["-"] * 3
        if stats:
            cells = [f"{stats['count']}/{stats['errors']}", _p(stats.get("ttft_ms")), _p(stats.get("latency_ms"))]
        name = escape(d["name"]) + (" (ingress)" if d["role"] == "ingress" else "")
        status = f"[{_STYLE.get(d['status'], 'red')}]{d['status']}[/]"
        table.add_row(name, status, _replicas(d), *cells)
    return table


def _placed(replica: dict) -> str:
    node = f"node {replica['node_id'][:8]} {replica['node_ip']}" if replica["node_id"] else "no node yet"
    return f"{node} ({replica['state'].lower()})"


def _replicas(deployment: dict) -> str:
    """`1/2 (1-4)`: running/target like kubectl's READY, and an autoscaled deployment's bounds (the replicas in each
    state are in --json). Without a target from Serve, the count of each state."""
    counts = deployment["replicas"]
    target = deployment.get("target_replicas")
    if target is None:
        return ", ".join(f"{n} {state.lower()}" for state, n in counts.items()) or "-"
    text = f"{counts.get('RUNNING', 0)}/{target}"
    if bounds := deployment.get("autoscaling"):
        text += f" ({bounds['min_replicas']}-{bounds['max_replicas']})"
    return text


def _p(values: dict | None) -> str:
    if not values or values.get("p50") is None:
        return "-"
    return f"{values['p50']:.0f}/{values['p95']:.0f}"


def _last_line(message: str) -> str:
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return lines[0] if len(lines) == 1 else f"{lines[0][:80]} ... {lines[-1]}"
