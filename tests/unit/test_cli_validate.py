"""`aana validate`: exit codes, what goes to stdout (the plan, the JSON) and what to stderr (errors, warnings).

Runs the real Typer app in-process with the terminal width pinned; nothing is patched.
"""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aana_cli.main import app

REPO = Path(__file__).resolve().parents[2]

ECHO = """
name = "demo"

[deployments.llm]
engine = "echo"
max_model_len = 512
chat_template = "chatml"

[deployments.llm.sampling]
temperature = 0.5
max_tokens = 64
"""


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "100"})


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Relative paths keep the printed `valid: PATH` line short of the pinned width.
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(folder: Path, text: str, name: str = "spec.toml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def no_traceback(result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stderr


def test_valid_spec_prints_the_plan_and_exits_0(runner, in_tmp):
    write(in_tmp, ECHO)
    result = runner.invoke(app, ["validate", "spec.toml"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    lines = [line.rstrip() for line in result.stdout.splitlines()]
    assert lines[0].split() == ["app", "demo", "http://localhost:8000/v1"]
    assert lines[-1] == "valid: spec.toml"
    rows = {line.split(maxsplit=1)[0]: line.split(maxsplit=1)[1] for line in lines[1:-1] if line.strip()}
    assert rows == {
        "llm": "engine echo",
        "model": "echo (hub)",
        "resources": "1 replica(s) x 1 CPU, 0 GPU",
        "context": "512 tokens",
        "template": "from the spec",
        "sampling": "temperature=0.5 max_tokens=64",
        "options": "token_delay_s=0.0",
    }


def test_every_deployment_is_printed(runner, in_tmp):
    write(in_tmp, 'name = "two"\n[deployments.first]\nengine = "echo"\n[deployments.second]\nengine = "echo"\n')
    result = runner.invoke(app, ["validate", "spec.toml"])
    assert result.exit_code == 0, result.output
    starts = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    assert starts.index("first") < starts.index("second")


def test_invalid_spec_exits_1_with_the_key_path_on_stderr(runner, in_tmp):
    write(in_tmp, ECHO.replace("temperature = 0.5", "temperature = 3"))
    result = runner.invoke(app, ["validate", "spec.toml"])
    assert result.exit_code == 1
    assert result.stdout == ""
    no_traceback(result)
    lines = result.stderr.splitlines()
    assert lines[0] == "error: spec.toml is not a valid aana spec:"
    assert lines[1].startswith("  deployments.llm.sampling.temperature: ")
    assert "less than or equal to 2" in lines[1] and "(got 3)" in lines[1]
    assert "aana validate SPEC" in lines[-1]


def test_every_problem_is_on_stderr(runner, in_tmp):
    write(in_tmp, 'name = "demo"\n[server]\nprt = 1\n[deployments.llm]\nengine = "vlm"\nmodel = "m"\n')
    result = runner.invoke(app, ["validate", "spec.toml"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "  server.prt: unknown key 'prt'; did you mean 'port'?" in result.stderr.splitlines()
    assert "  deployments.llm.engine: unknown engine 'vlm' (did you mean 'vllm'?)" in result.stderr


def test_toml_syntax_error_exits_1(runner, in_tmp):
    write(in_tmp, 'name = "demo"\n[deployments.llm\n')
    result = runner.invoke(app, ["validate", "spec.toml"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "  <toml>: not valid TOML" in result.stderr
    no_traceback(result)


def test_bad_template_is_reported_by_the_plan_step(runner, in_tmp):
    write(in_tmp, ECHO.replace('"chatml"', '"nope"'))
    result = runner.invoke(app, ["validate", "spec.toml"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "deployments.llm.chat_template: 'nope' is not a bundled template" in result.stderr


def test_json_prints_the_plan_as_one_document(runner, in_tmp):
    write(in_tmp, ECHO + '\n[deployments.other]\nengine = "echo"\nengine_args = { seed_offset = 3 }\n')
    result = runner.invoke(app, ["validate", "--json", "spec.toml"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    doc = json.loads(result.stdout)
    assert (doc["app"], doc["base_url"]) == ("demo", "http://localhost:8000")
    assert doc["deployments"] == [
        {
            "model": "llm",
            "engine": "echo",
            "source": {"kind": "hub", "location": "echo"},
            "num_replicas": 1,
            "autoscaling": None,
            "num_cpus": 1.0,
            "num_gpus": 0.0,
            "max_model_len": 512,
            "sampling": {"temperature": 0.5, "max_tokens": 64},
            "options": {"token_delay_s": 0.0},
            "engine_args": {},
        },
        {
            "model": "other",
            "engine": "echo",
            "source": {"kind": "hub", "location": "echo"},
            "num_replicas": 1,
            "autoscaling": None,
            "num_cpus": 1.0,
            "num_gpus": 0.0,
            "max_model_len": None,
            "sampling": {},
            "options": {"token_delay_s": 0.0},
            "engine_args": {"seed_offset": 3},
        },
    ]


def test_json_is_not_wrapped_at_the_terminal_width(runner, tmp_path):
    weights = tmp_path / ("long-folder-name-" * 8) / "model.Q4_1.gguf"
    weights.parent.mkdir()
    weights.write_bytes(b"GGUF")
    path = write(tmp_path, f'name = "demo"\n[deployments.llm]\nengine = "transformers"\nmodel = "{weights}"\n')
    assert len(str(weights)) > 100
    result = runner.invoke(app, ["validate", "--json", str(path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["deployments"][0]["source"] == {"kind": "gguf", "location": str(weights)}


def test_json_of_an_invalid_spec_prints_nothing_on_stdout(runner, in_tmp):
    write(in_tmp, 'name = "demo"\n')
    result = runner.invoke(app, ["validate", "--json", "spec.toml"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "  deployments: missing required key 'deployments'" in result.stderr


def test_missing_engine_package_warns_and_exits_0(runner, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real_find_spec(name, *a)
    )  # as on a machine without vllm, also where it is installed
    result = runner.invoke(app, ["validate", str(REPO / "specs" / "llama2.toml")])
    assert result.exit_code == 0, result.output
    [warning] = result.stderr.splitlines()
    assert warning.startswith("warning: deployment 'llm_deployment': engine 'vllm' needs vllm, not installed here")
    assert "pip install 'aana[vllm]'" in warning
    assert "llm_deployment" in result.stdout and "engine vllm" in result.stdout
    assert "warning" not in result.stdout


def test_missing_local_model_warns_and_exits_0(runner, in_tmp):
    write(in_tmp, 'name = "demo"\n[deployments.llm]\nengine = "echo"\nmodel = "./weights"\n')
    result = runner.invoke(app, ["validate", "spec.toml"])
    assert result.exit_code == 0, result.output
    expected = f"warning: deployments.llm.model: {in_tmp.resolve() / 'weights'} does not exist; fix the path"
    assert expected in result.stderr.splitlines()
    assert result.stdout.splitlines()[-1] == "valid: spec.toml"


def test_nonexistent_spec_path_is_a_usage_error(runner, in_tmp):
    result = runner.invoke(app, ["validate", "missing.toml"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "missing.toml" in result.stderr and "does not exist" in result.stderr


def test_a_directory_is_a_usage_error(runner, in_tmp):
    (in_tmp / "folder").mkdir()
    result = runner.invoke(app, ["validate", "folder"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "is a directory" in result.stderr


def test_valid_line_prints_the_path_as_given(runner, in_tmp):
    write(in_tmp / "a[bold]b", ECHO)
    result = runner.invoke(app, ["validate", "a[bold]b/spec.toml"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "valid: a[bold]b/spec.toml"


def test_json_with_a_toml_date_in_engine_args_does_not_crash(runner, in_tmp):
    write(in_tmp, 'name = "demo"\n[deployments.llm]\nengine = "echo"\nengine_args = { since = 2024-05-01 }\n')
    result = runner.invoke(app, ["validate", "--json", "spec.toml"])
    no_traceback(result)
    assert result.exit_code == 0, result.output
    [llm] = json.loads(result.stdout)["deployments"]
    assert llm["engine_args"] == {"since": "2024-05-01"}  # a TOML date is printed as ISO text


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="checks names against the installed vllm")
def test_unknown_vllm_engine_arg_is_an_error_naming_the_nearest(runner, in_tmp):
    write(in_tmp, 'name = "demo"\n[deployments.llm]\nengine = "vllm"\nmodel = "org/m"\n'
                  "[deployments.llm.engine_args]\nmax_num_seq = 8\n")  # fmt: skip
    result = runner.invoke(app, ["validate", "spec.toml"])
    assert result.exit_code == 1
    assert "deployments.llm.engine_args.max_num_seq is not a vLLM engine argument" in result.stderr
    assert "max_num_seqs" in result.stderr


def test_validate_never_prints_the_api_key_or_a_database_password(runner, in_tmp, monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "sk-live-0123")
    write(in_tmp, 'name = "demo"\n[server]\napi_key = "${SECRET_KEY}"\n'
                  '[database]\nurl = "postgresql://aana:pw-9876@db.example/aana"\n'
                  '[deployments.llm]\nengine = "echo"\n')  # fmt: skip
    for args in (["validate", "spec.toml"], ["validate", "--json", "spec.toml"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "sk-live-0123" not in result.output and "pw-9876" not in result.output
