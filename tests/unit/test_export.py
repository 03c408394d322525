"""`aana export` and the builder its files name: the Serve config's shape (checked against Ray Serve's own schema),
secrets that stay `${VAR}` references, the RayService that embeds the same config, relative paths, the builder's
plan against `aana up`'s, and the command's exit codes and streams. Nothing is patched; no Ray starts.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from ray.serve.exceptions import RayServeException
from ray.serve.schema import ServeDeploySchema
from typer.testing import CliRunner

from aana_cli.main import app
from runtime import app as serve_app
from runtime.export import BUILDER, FORWARDED_ENV, SERVE_ENV_DEFAULTS, BuildArgs, export, k8s_name, runtime_env_vars
from runtime.plan import load_plan
from runtime.serve_builder import plan_of, recording_of

SPEC = """
name = "demo"

[server]
port = 8123
api_key = "${AANA_TEST_KEY}"

[database]
url = "postgresql://aana:${AANA_TEST_DB_PASSWORD}@db:5432/aana"

[deployments.llm]
engine = "echo"
num_cpus = 1.5
num_replicas = 2
num_gpus = 0.5

[deployments.small]
engine = "echo"
num_cpus = 0.5
max_model_len = "${AANA_TEST_LEN:-512}"
"""


def write(folder: Path, text: str, name: str = "spec.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def secrets(monkeypatch):
    """Secrets set in the exporting shell: they must never reach the file."""
    monkeypatch.setenv("AANA_TEST_KEY", "sk-shell-secret")
    monkeypatch.setenv("AANA_TEST_DB_PASSWORD", "db-shell-secret")
    monkeypatch.delenv("AANA_TEST_LEN", raising=False)


def test_serve_config_names_the_builder_and_carries_the_spec_as_written(tmp_path, secrets, monkeypatch):
    for name in FORWARDED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", "/models/hf")
    spec = write(tmp_path, SPEC)
    exported = export(spec)
    assert ServeDeploySchema.model_validate(exported.document)  # what `serve deploy` checks first
    assert yaml.safe_load(exported.text) == exported.document  # the header is comments only
    assert exported.document["http_options"] == {"host": "127.0.0.1", "port": 8123}
    [application] = exported.document["applications"]
    assert {k: v for k, v in application.items() if k != "args"} == {
        "name": "demo",
        "route_prefix": "/",
        "import_path": BUILDER,
        "runtime_env": {"env_vars": SERVE_ENV_DEFAULTS | {"HF_HOME": "/models/hf"}},
    }
    assert application["args"] == {"spec": spec.read_text(), "source": "spec.toml"}
    # A block, readable as the file was.
    assert "    spec: |" in exported.text and '\n      [deployments.llm]\n      engine = "echo"\n' in exported.text
    assert exported.warnings == []


def test_secrets_stay_references_whether_or_not_the_shell_has_them(tmp_path, secrets, monkeypatch):
    spec = write(tmp_path, SPEC)
    for fmt in ("serve", "rayservice"):
        text = export(spec, fmt).text
        assert "sk-shell-secret" not in text and "db-shell-secret" not in text
        assert "${AANA_TEST_KEY}" in text and "${AANA_TEST_DB_PASSWORD}" in text
    monkeypatch.delenv("AANA_TEST_KEY")
    monkeypatch.delenv("AANA_TEST_DB_PASSWORD")
    exported = export(spec)  # exporting needs no secret
    assert "# The cluster must define: AANA_TEST_DB_PASSWORD, AANA_TEST_KEY.\n" in exported.text


def test_a_secret_written_into_the_spec_is_exported_with_a_warning(tmp_path):
    spec = write(tmp_path, 'name = "d"\n[server]\napi_key = "sk-literal"\n[deployments.e]\nengine = "echo"\n')
    exported = export(spec)
    assert "sk-literal" in exported.document["applications"][0]["args"]["spec"]
    assert exported.warnings == [
        'server.api_key is written in the spec itself, so it is in the exported file too; write api_key = '
        '"${AANA_API_KEY}" and set the variable on the cluster'
    ]  # fmt: skip


def test_host_and_port_override_the_spec_for_the_proxy_and_the_builder(tmp_path, secrets):
    spec = write(tmp_path, SPEC)
    config = export(spec, host="0.0.0.0", port=9000).document
    assert config["http_options"] == {"host": "0.0.0.0", "port": 9000}
    args = config["applications"][0]["args"]
    assert (args["host"], args["port"]) == ("0.0.0.0", 9000)
    plan = plan_of(args)
    assert (plan.host, plan.port, plan.allowed_hosts) == ("0.0.0.0", 9000, ("*",))  # the bind moved the allow-list


def test_rayservice_embeds_the_serve_config_and_sizes_one_worker_group_from_the_spec(tmp_path, secrets):
    spec = write(tmp_path, SPEC)
    exported = export(spec, "rayservice")
    manifest = yaml.safe_load(exported.text)
    assert manifest == exported.document
    assert (manifest["apiVersion"], manifest["kind"], manifest["metadata"]["name"]) == (
        "ray.io/v1",
        "RayService",
        "demo",
    )
    # The same Serve config, with the proxy where a pod's Service reaches it.
    assert yaml.safe_load(manifest["spec"]["serveConfigV2"]) == export(spec, host="0.0.0.0").document
    cluster = manifest["spec"]["rayClusterConfig"]
    [head] = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    [group] = cluster["workerGroupSpecs"]
    [worker] = group["template"]["spec"]["containers"]
    assert cluster["headGroupSpec"]["rayStartParams"] == {"num-cpus": "0"}  # models go to the workers
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (1, 1, 1)
    # 2 x 1.5 + 0.5 CPUs for the models and 0.1 for the one ingress replica a 4-CPU node gets... rounded up: 4; that
    # node then gets 2 ingress replicas (0.2), still within 4. GPUs: 2 x 0.5.
    assert worker["resources"]["limits"] == {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": 1}
    assert {"containerPort": 8123, "name": "serve"} in head["ports"] and worker["ports"] == [
        {"containerPort": 8123, "name": "serve"}
    ]
    # Every ${VAR} of the spec comes from the app's Secret; one with a default may be missing there.
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in worker["env"]}
    assert refs == {
        "AANA_TEST_DB_PASSWORD": {"name": "demo-env", "key": "AANA_TEST_DB_PASSWORD", "optional": False},
        "AANA_TEST_KEY": {"name": "demo-env", "key": "AANA_TEST_KEY", "optional": False},
        "AANA_TEST_LEN": {"name": "demo-env", "key": "AANA_TEST_LEN", "optional": True},
    }
    assert head["env"] == worker["env"] and head["image"] == worker["image"]
    assert "placeholder" in exported.text.split("apiVersion:")[0]


def test_relative_paths_resolve_against_the_spec_folder_as_aana_up_resolves_them(tmp_path):
    (tmp_path / "specs" / "templates").mkdir(parents=True)
    (tmp_path / "weights").mkdir()
    (tmp_path / "specs" / "templates" / "t.jinja").write_text("{{ messages }}")
    spec = write(tmp_path / "specs", """
        name = "paths"
        [deployments.m]
        engine = "echo"
        model = "../weights"
        chat_template = "templates/t.jinja"
        """)  # fmt: skip
    exported = export(spec)
    args = exported.document["applications"][0]["args"]
    assert args["base_dir"] == str((tmp_path / "specs").resolve())
    assert plan_of(args) == load_plan(spec)
    assert [w.split(":")[0] for w in exported.warnings] == ["deployments.m.model", "deployments.m.chat_template"]
    assert (
        f"# deployments.m.model: ../weights resolves against args.base_dir to {tmp_path / 'weights'}" in exported.text
    )


def test_the_builder_fails_with_the_spec_s_own_message_when_the_cluster_lacks_a_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("AANA_TEST_KEY", raising=False)
    args = BuildArgs(spec=textwrap.dedent(SPEC), source="demo.toml").model_dump(exclude_none=True)
    with pytest.raises(RayServeException) as failure:
        plan_of(args)
    assert str(failure.value).splitlines()[:2] == [
        "demo.toml is not a valid aana spec:",
        "  server.api_key: environment variable AANA_TEST_KEY is not set; export it or write ${AANA_TEST_KEY:-default}",
    ]
    with pytest.raises(RayServeException, match="not what `aana export` writes"):
        plan_of({"spec": SPEC, "extra": 1})


def test_the_runtime_env_is_the_one_aana_up_gives_replicas():
    assert serve_app._runtime_env()["env_vars"] == runtime_env_vars()  # one definition for aana up and export


def test_the_builder_refuses_a_database_behind_its_schema(tmp_path):
    spec = write(
        tmp_path, f'name = "d"\n[database]\nurl = "sqlite:///{tmp_path}/new.db"\n[deployments.e]\nengine = "echo"\n'
    )
    args = export(spec).document["applications"][0]["args"]
    with pytest.raises(
        RayServeException, match=r"^database.url: the database at .* has no aana tables yet .*`aana migrate"
    ):
        recording_of(plan_of(args))
    without = write(tmp_path, 'name = "d"\n[deployments.e]\nengine = "echo"\n', "plain.toml")
    assert recording_of(plan_of(export(without).document["applications"][0]["args"])) is None


@pytest.mark.parametrize(
    ("app_name", "k8s"), [("demo", "demo"), ("My_App.v2", "my-app-v2"), ("7b-chat", "aana-7b-chat")]
)
def test_kubernetes_names(app_name, k8s):
    assert k8s_name(app_name) == k8s


# ---------------------------------------------------------------------------------------------------------------
# The command


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "100"})


def test_cli_prints_the_yaml_to_stdout_and_nothing_else(runner, tmp_path, secrets):
    spec = write(tmp_path, SPEC)
    result = runner.invoke(app, ["export", str(spec), "--format", "rayservice"])
    assert result.exit_code == 0, result.output
    assert result.stdout == export(spec, "rayservice").text
    assert result.stderr == ""


def test_cli_writes_the_file_with_o_and_says_so_on_stderr(runner, tmp_path, secrets):
    spec = write(tmp_path, SPEC)
    out = tmp_path / "serve.yaml"
    result = runner.invoke(app, ["export", str(spec), "-o", str(out), "--port", "9001"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert out.read_text() == export(spec, port=9001).text
    assert f"wrote {out}; deploy it with `serve deploy {out}" in result.stderr


def test_cli_invalid_spec_exits_1_with_the_key_path_on_stderr(runner, tmp_path):
    spec = write(tmp_path, 'name = "d"\n[server]\nprt = 1\n[deployments.e]\nengine = "echo"\n')
    result = runner.invoke(app, ["export", str(spec)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "  server.prt: unknown key 'prt'; did you mean 'port'?" in result.stderr.splitlines()
    assert "Traceback" not in result.stderr


def test_cli_unwritable_output_exits_1(runner, tmp_path, secrets):
    spec = write(tmp_path, SPEC)
    result = runner.invoke(app, ["export", str(spec), "-o", str(tmp_path / "no" / "such" / "dir.yaml")])
    assert result.exit_code == 1
    assert "error: cannot write" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["--format", "helm"], ["--port", "0"]])
def test_cli_usage_errors_exit_2(runner, tmp_path, secrets, args):
    spec = write(tmp_path, SPEC)
    assert runner.invoke(app, ["export", str(spec), *args]).exit_code == 2


def test_cli_missing_spec_exits_2(runner, tmp_path):
    assert runner.invoke(app, ["export", str(tmp_path / "nope.toml")]).exit_code == 2
