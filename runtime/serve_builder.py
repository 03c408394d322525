"""The application builder that an exported Serve config names (`import_path: runtime.serve_builder:build`).

`serve deploy FILE` (or KubeRay) hands `build` the config's `args` (`runtime.export.BuildArgs`) in a task on the
cluster. It does what `aana up` does between reading the spec and `serve.run`, from the spec's text: interpolate
`${VAR}` from this cluster's environment, plan, size the ingress to the cluster, reset the app's drain flag and
name its HTTP deployment for `aana down`, and bind the same application `aana up` deploys. A spec that cannot be
used (a variable missing on the cluster, a bad key) or a database behind its schema fails the deploy with aana's
own message, without a traceback and without Serve's retries.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from ray.serve import Application
from ray.serve.exceptions import RayServeException

from runtime import cluster
from runtime.app import build_app
from runtime.export import BuildArgs
from runtime.plan import AppPlan, build_plan
from runtime.records import Recording
from runtime.spec import SpecError, parse_spec


def build(args: dict[str, Any]) -> Application:
    """The aana app of the spec in `args` (exactly one parameter: Serve passes the config's `args` dict)."""
    plan = plan_of(args)
    recording = recording_of(plan)
    plan = plan.with_ingress_replicas(cluster.cpu_count())
    # As `cluster.deploy` does before `aana up` submits the app: a flag left by an earlier `aana down` of this app
    # would make the new replicas refuse every request, and the drain needs to know which deployment serves HTTP.
    cluster._forget_drain(plan.app_name)
    cluster._remember_front(plan)
    return build_app(plan, recording)


def plan_of(args: dict[str, Any]) -> AppPlan:
    """The plan of the exported spec, the spec interpolated from this process's environment.
    Raises RayServeException, which Serve reports as the deploy's failure as it is (no traceback, no retry)."""
    try:
        given = BuildArgs.model_validate(args)
    except ValidationError as exc:
        raise RayServeException(f"these args are not what `aana export` writes; export the spec again: {exc}") from None
    try:
        spec = parse_spec(given.spec, source=given.source)
        plan = build_plan(spec, base_dir=given.base_dir or ".", source=given.source)
    except SpecError as exc:
        raise RayServeException(str(exc)) from None
    return plan.with_server(given.host, given.port)


def recording_of(plan: AppPlan) -> Recording | None:
    """Where the HTTP replicas record requests: the spec's database.url, checked to be at the current schema. None
    without one: a default SQLite file on whichever node the build runs would help nobody."""
    if not plan.database_url:
        return None
    from runtime.store import migrate
    from runtime.store.errors import StoreError

    try:
        migrate.require_current(plan.database_url, migrate.migrate_command(plan.database_url, "--database-url"))
    except StoreError as exc:
        raise RayServeException(f"database.url: {exc}") from None
    return Recording(plan.database_url, None)
