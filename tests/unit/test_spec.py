"""runtime.spec: TOML text -> AppSpec, and every way a spec can be wrong, as a person reads it.

Each problem must name the dotted key path the person wrote, say what is wrong and point at the fix. The tests
assert on exact paths and on the key words of messages, never on pydantic's full wording.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel

from runtime.spec import (
    DEPLOYMENT_CLASSES,
    AppSpec,
    AutoscalingSpec,
    DatabaseSpec,
    Problem,
    RaySpec,
    SamplingSpec,
    ServerSpec,
    SpecError,
    load_spec,
    parse_spec,
)

REPO = Path(__file__).resolve().parents[2]

ECHO = """
name = "demo"

[deployments.llm]
engine = "echo"
"""


def spec(text: str, environ: dict[str, str] | None = None) -> AppSpec:
    return parse_spec(textwrap.dedent(text), source="demo.toml", environ={} if environ is None else environ)


def problems(text: str, environ: dict[str, str] | None = None) -> list[Problem]:
    with pytest.raises(SpecError) as info:
        spec(text, environ)
    assert info.value.source == "demo.toml"
    assert info.value.problems, "a SpecError must carry at least one problem"
    return info.value.problems


def only_problem(text: str, environ: dict[str, str] | None = None) -> Problem:
    found = problems(text, environ)
    assert len(found) == 1, found
    return found[0]


def deployment(body: str, engine: str = "echo") -> str:
    """A one-deployment spec named `llm` whose table holds `body` after the engine line."""
    return f'name = "demo"\n\n[deployments.llm]\nengine = "{engine}"\n' + textwrap.dedent(body)


def assert_words(message: str, *words: str) -> None:
    missing = [w for w in words if w not in message]
    assert not missing, f"{missing} not in {message!r}"


# ---------------------------------------------------------------------------------------------------------------
# Valid specs


def test_minimal_echo_spec_gets_every_default():
    app = spec(ECHO)
    assert app.name == "demo"
    assert app.server == ServerSpec(host="127.0.0.1", port=8000, api_key=None)
    assert app.database == DatabaseSpec(url=None)
    assert app.ray == RaySpec(address=None, num_cpus=None)
    dep = app.deployments["llm"]
    assert isinstance(dep, DEPLOYMENT_CLASSES["echo"])
    assert (dep.model, dep.num_replicas, dep.num_cpus, dep.num_gpus) == ("echo", 1, 1.0, 0.0)
    assert (dep.max_ongoing_requests, dep.max_model_len, dep.chat_template) == (16, None, None)
    assert dep.sampling == SamplingSpec()
    assert dep.engine_args == {}
    assert dep.token_delay_s == 0.0


@pytest.mark.parametrize(
    ("engine", "model_class"),
    [
        ("transformers", DEPLOYMENT_CLASSES["transformers"]),
        ("vllm", DEPLOYMENT_CLASSES["vllm"]),
        ("echo", DEPLOYMENT_CLASSES["echo"]),
    ],
)
def test_engine_key_picks_the_deployment_class(engine, model_class):
    app = spec(deployment('model = "org/name"\n', engine))
    assert type(app.deployments["llm"]) is model_class
    assert app.deployments["llm"].engine == engine


def test_every_section_and_key_is_read():
    app = spec(
        """
        name = "full.app_1"

        [server]
        host = "0.0.0.0"
        port = 9001
        api_key = "sk-test"

        [database]
        url = "sqlite:///tmp/aana.db"

        [ray]
        address = "auto"
        num_cpus = 4

        [deployments.chat]
        engine = "transformers"
        model = "HuggingFaceTB/SmolLM2-135M-Instruct"
        tokenizer = "HuggingFaceTB/SmolLM2-135M-Instruct"
        revision = "main"
        num_replicas = 2
        num_cpus = 0.5
        num_gpus = 0.25
        max_model_len = 2048
        max_ongoing_requests = 4
        chat_template = "chatml"
        dtype = "bfloat16"
        device = "cpu"
        threads = 2
        engine_args = { trust_remote_code = true, nested = { a = [1, 2] } }

        [deployments.chat.sampling]
        temperature = 0.7
        top_p = 0.9
        top_k = 40
        min_p = 0.05
        max_tokens = 128
        repetition_penalty = 1.1
        presence_penalty = -0.5
        frequency_penalty = 0.5
        stop = ["</s>", "\\n\\n"]
        seed = 7
        """
    )
    assert app.server == ServerSpec(host="0.0.0.0", port=9001, api_key="sk-test")
    assert app.database.url == "sqlite:///tmp/aana.db"
    assert app.ray == RaySpec(address="auto", num_cpus=4)
    dep = app.deployments["chat"]
    assert isinstance(dep, DEPLOYMENT_CLASSES["transformers"])
    assert (dep.tokenizer, dep.revision, dep.num_replicas, dep.num_cpus, dep.num_gpus) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "main",
        2,
        0.5,
        0.25,
    )
    assert (dep.max_model_len, dep.max_ongoing_requests, dep.chat_template) == (2048, 4, "chatml")
    assert (dep.dtype, dep.device, dep.threads) == ("bfloat16", "cpu", 2)
    assert dep.engine_args == {"trust_remote_code": True, "nested": {"a": [1, 2]}}
    assert dep.sampling == SamplingSpec(
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        max_tokens=128,
        repetition_penalty=1.1,
        presence_penalty=-0.5,
        frequency_penalty=0.5,
        stop=["</s>", "\n\n"],
        seed=7,
    )


def test_vllm_keys():
    dep = spec(
        deployment(
            """
            model = "TheBloke/Llama-2-7b-Chat-AWQ"
            dtype = "half"
            quantization = "awq"
            gpu_memory_utilization = 0.8
            enforce_eager = true
            tensor_parallel_size = 2
            kv_cache_space_gb = 4
            """,
            "vllm",
        )
    ).deployments["llm"]
    assert isinstance(dep, DEPLOYMENT_CLASSES["vllm"])
    assert (dep.dtype, dep.quantization, dep.gpu_memory_reserved, dep.gpu_memory_utilization) == (
        "half",
        "awq",
        None,
        0.8,
    )
    assert (dep.enforce_eager, dep.tensor_parallel_size, dep.kv_cache_space_gb) == (True, 2, 4.0)


def test_a_single_stop_string_becomes_a_list():
    dep = spec(deployment('[deployments.llm.sampling]\nstop = "###"\n')).deployments["llm"]
    assert dep.sampling.stop == ["###"]


def test_deployments_keep_the_order_of_the_file():
    app = spec(
        """
        name = "demo"
        [deployments.zeta]
        engine = "echo"
        [deployments.alpha]
        engine = "echo"
        [deployments.mid]
        engine = "echo"
        """
    )
    assert list(app.deployments) == ["zeta", "alpha", "mid"]


@pytest.mark.parametrize("name", ["llm", "Llama-2-7b.chat_v1", "7b", "a"])
def test_valid_deployment_names(name):
    assert list(spec(f'name = "demo"\n[deployments."{name}"]\nengine = "echo"\n').deployments) == [name]


def test_deployment_named_like_an_engine_keeps_its_paths():
    # The union tag stripped from pydantic's error path must not eat a deployment that is called `vllm`.
    found = only_problem('name = "demo"\n[deployments.vllm]\nengine = "vllm"\nmodel = "m"\nport = 1\n')
    assert found.path == "deployments.vllm.port"


def test_spec_is_frozen():
    app = spec(ECHO)
    with pytest.raises(Exception, match="frozen"):
        app.name = "other"  # type: ignore[misc]


SPEC_MODELS = [AppSpec, ServerSpec, DatabaseSpec, RaySpec, SamplingSpec, DEPLOYMENT_CLASSES["transformers"], DEPLOYMENT_CLASSES["vllm"],
               DEPLOYMENT_CLASSES["echo"], AutoscalingSpec]  # fmt: skip


@pytest.mark.parametrize("model", SPEC_MODELS, ids=lambda m: m.__name__)
def test_every_field_has_a_description(model: type[BaseModel]):
    # The descriptions are the help text of `missing required key` problems and of the spec reference.
    bare = [name for name, field in model.model_fields.items() if not field.description]
    assert bare == []


# ---------------------------------------------------------------------------------------------------------------
# Unknown keys


@pytest.mark.parametrize(
    ("text", "path", "suggestion"),
    [
        ('name = "demo"\n[serer]\nport = 1\n[deployments.llm]\nengine = "echo"\n', "serer", "'server'"),
        ('name = "demo"\n[server]\nprt = 1\n[deployments.llm]\nengine = "echo"\n', "server.prt", "'port'"),
        ('name = "demo"\n[ray]\nadress = "auto"\n[deployments.llm]\nengine = "echo"\n', "ray.adress", "'address'"),
        (deployment("num_replica = 2\n"), "deployments.llm.num_replica", "'num_replicas'"),
        (deployment("token_delay = 0.1\n"), "deployments.llm.token_delay", "'token_delay_s'"),
        (
            deployment('model = "m"\ngpu_memory_reserve = 1\n', "vllm"),
            "deployments.llm.gpu_memory_reserve",
            "'gpu_memory_reserved'",
        ),
        (
            deployment("[deployments.llm.sampling]\ntemprature = 1\n"),
            "deployments.llm.sampling.temprature",
            "'temperature'",
        ),
    ],
)
def test_unknown_key_with_a_near_match_suggests_it(text, path, suggestion):
    found = only_problem(text)
    assert found.path == path
    key = path.rsplit(".", 1)[-1]
    assert found.message == f"unknown key {key!r}; did you mean {suggestion}?"


@pytest.mark.parametrize(
    ("text", "path", "key", "table"),
    [
        (deployment("temperature = 0.5\n"), "deployments.llm.temperature", "temperature", "deployments.llm.sampling"),
        (deployment("max_tokens = 10\n"), "deployments.llm.max_tokens", "max_tokens", "deployments.llm.sampling"),
        (deployment('stop = ["x"]\n'), "deployments.llm.stop", "stop", "deployments.llm.sampling"),
        (
            deployment('model = "m"\ntemprature = 0.5\n', "vllm"),
            "deployments.llm.temprature",
            "temperature",
            "deployments.llm.sampling",
        ),
        ('name = "demo"\nport = 8000\n[deployments.llm]\nengine = "echo"\n', "port", "port", "server"),
        ('name = "demo"\napi_key = "k"\n[deployments.llm]\nengine = "echo"\n', "api_key", "api_key", "server"),
    ],
)
def test_unknown_key_that_belongs_one_table_down_points_at_that_table(text, path, key, table):
    found = only_problem(text)
    assert found.path == path
    assert_words(found.message, f"unknown key {path.rsplit('.', 1)[-1]!r}", f"did you mean {key!r}", f"[{table}]")


def test_unknown_key_without_a_near_match_lists_the_valid_keys_of_that_engine():
    found = only_problem(deployment("zzzz = 1\n"))
    assert found.path == "deployments.llm.zzzz"
    assert found.message.startswith("unknown key 'zzzz'; valid keys here: ")
    listed = found.message.split("valid keys here: ")[1].split(", ")
    assert listed == sorted(DEPLOYMENT_CLASSES["echo"].model_fields)
    assert "token_delay_s" in listed and "did you mean" not in found.message


def test_key_of_another_engine_is_unknown_and_the_list_shows_this_engines_keys():
    found = only_problem(deployment('model = "m"\nquantization = "awq"\n', "transformers"))
    assert found.path == "deployments.llm.quantization"
    listed = found.message.split("valid keys here: ")[1].split(", ")
    assert listed == sorted(DEPLOYMENT_CLASSES["transformers"].model_fields)
    assert "quantization" not in listed and "threads" in listed


def test_unknown_top_level_key_lists_the_sections():
    found = only_problem('name = "demo"\nzzzz = 1\n[deployments.llm]\nengine = "echo"\n')
    assert found.path == "zzzz"
    assert found.message == "unknown key 'zzzz'; valid keys here: database, deployments, name, ray, server"


# ---------------------------------------------------------------------------------------------------------------
# Missing keys and engines


@pytest.mark.parametrize("engine", ["transformers", "vllm"])
def test_missing_model_names_the_key_and_says_what_to_write(engine):
    found = only_problem(deployment("", engine))
    assert found.path == "deployments.llm.model"
    assert_words(found.message, "missing required key 'model'", "Hugging Face id", "pkg:")


def test_echo_needs_no_model():
    assert spec(ECHO).deployments["llm"].model == "echo"


def test_missing_name():
    found = only_problem('[deployments.llm]\nengine = "echo"\n')
    assert found.path == "name"
    assert_words(found.message, "missing required key 'name'", "App name")


def test_missing_engine_lists_the_engines():
    found = only_problem('name = "demo"\n[deployments.llm]\nmodel = "org/name"\n')
    assert found.path == "deployments.llm.engine"
    assert (
        found.message == "missing required key 'engine'; choose one of: transformers, vllm, echo, sentence_transformers"
    )


@pytest.mark.parametrize(("given", "hint"), [("vlm", "vllm"), ("transformer", "transformers"), ("ecco", "echo")])
def test_unknown_engine_suggests_the_nearest(given, hint):
    found = only_problem(f'name = "demo"\n[deployments.llm]\nengine = "{given}"\nmodel = "m"\n')
    assert found.path == "deployments.llm.engine"
    assert found.message == (
        f"unknown engine {given!r} (did you mean {hint!r}?); choose one of: transformers, vllm, echo, sentence_transformers"
    )


def test_unknown_engine_without_a_near_match_only_lists_the_engines():
    found = only_problem('name = "demo"\n[deployments.llm]\nengine = "llamacpp"\nmodel = "m"\n')
    assert found.path == "deployments.llm.engine"
    assert found.message == "unknown engine 'llamacpp'; choose one of: transformers, vllm, echo, sentence_transformers"


def test_missing_deployments_table():
    found = only_problem('name = "demo"\n')
    assert found.path == "deployments"
    assert_words(found.message, "missing required key 'deployments'", "One table per model")


def test_empty_deployments_table_names_the_key():
    assert only_problem('name = "demo"\n[deployments]\n').path == "deployments"


def test_empty_deployments_table_says_how_to_add_one():
    found = only_problem('name = "demo"\n[deployments]\n')
    assert_words(found.message, "[deployments.")


# ---------------------------------------------------------------------------------------------------------------
# Values out of range and of the wrong type


@pytest.mark.parametrize(
    ("body", "path", "words"),
    [
        ("[deployments.llm.sampling]\ntemperature = 3\n", "deployments.llm.sampling.temperature", ["2", "(got 3)"]),
        ("[deployments.llm.sampling]\ntemperature = -0.1\n", "deployments.llm.sampling.temperature", ["(got -0.1)"]),
        ("[deployments.llm.sampling]\ntop_p = 0\n", "deployments.llm.sampling.top_p", ["greater than 0", "(got 0)"]),
        ("[deployments.llm.sampling]\ntop_k = -2\n", "deployments.llm.sampling.top_k", ["-1", "(got -2)"]),
        ("[deployments.llm.sampling]\nmax_tokens = 0\n", "deployments.llm.sampling.max_tokens", ["1", "(got 0)"]),
        ("num_replicas = 0\n", "deployments.llm.num_replicas", ["greater than or equal to 1", "(got 0)"]),
        ("num_gpus = -1\n", "deployments.llm.num_gpus", ["greater than or equal to 0", "(got -1)"]),
        ("token_delay_s = -1\n", "deployments.llm.token_delay_s", ["(got -1)"]),
    ],
)
def test_value_out_of_range_shows_the_bound_and_the_given_value(body, path, words):
    found = only_problem(deployment(body))
    assert found.path == path
    assert_words(found.message, *words)


def test_port_out_of_range():
    found = only_problem('name = "demo"\n[server]\nport = 70000\n[deployments.llm]\nengine = "echo"\n')
    assert found.path == "server.port"
    assert_words(found.message, "65535", "(got 70000)")


def test_vllm_memory_fraction_out_of_range():
    found = only_problem(deployment('model = "m"\ngpu_memory_utilization = 1.5\n', "vllm"))
    assert found.path == "deployments.llm.gpu_memory_utilization"
    assert_words(found.message, "less than or equal to 1", "(got 1.5)")


@pytest.mark.parametrize(
    ("body", "engine", "path", "words"),
    [
        ('num_replicas = "two"\n', "echo", "deployments.llm.num_replicas", ["integer", "(got 'two')"]),
        ("num_replicas = 1.5\n", "echo", "deployments.llm.num_replicas", ["integer", "(got 1.5)"]),
        ('model = "m"\nenforce_eager = "maybe"\n', "vllm", "deployments.llm.enforce_eager", ["boolean", "'maybe'"]),
        (
            'model = "m"\ndtype = "float8"\n',
            "transformers",
            "deployments.llm.dtype",
            ["'auto', 'float32', 'float16' or 'bfloat16'", "(got 'float8')"],
        ),
        ('model = "m"\ndevice = "tpu"\n', "transformers", "deployments.llm.device", ["'cuda'", "(got 'tpu')"]),
        ("model = 7\n", "transformers", "deployments.llm.model", ["string", "(got 7)"]),
        ("sampling = 3\n", "echo", "deployments.llm.sampling", ["dictionary"]),
        ("engine_args = 3\n", "echo", "deployments.llm.engine_args", ["dictionary"]),
        ("[deployments.llm.sampling]\nstop = [1]\n", "echo", "deployments.llm.sampling.stop[0]", ["string"]),
    ],
)
def test_wrong_type_names_the_path_and_the_expected_type(body, engine, path, words):
    found = only_problem(deployment(body, engine))
    assert found.path == path
    assert_words(found.message, *words)


def test_deployment_that_is_not_a_table():
    found = only_problem('name = "demo"\ndeployments.llm = 3\n')
    assert found.path == "deployments.llm"
    assert_words(found.message, "dictionary", "(got 3)")


@pytest.mark.parametrize("name", ["bad name", "-leading-dash", "a/b", ".hidden", "ünï"])
def test_bad_deployment_name_says_what_a_name_may_hold(name):
    found = only_problem(f'name = "demo"\n[deployments."{name}"]\nengine = "echo"\n')
    assert found.path == f"deployments.{name}"
    assert_words(found.message, "deployment name", "letters, digits", "OpenAI model id", "rename the table")


def test_bad_app_name_shows_the_value():
    found = only_problem('name = "bad name"\n[deployments.llm]\nengine = "echo"\n')
    assert found.path == "name"
    assert_words(found.message, "pattern", "(got 'bad name')")


def test_both_gpu_memory_limits_is_one_problem_naming_both_keys():
    found = only_problem(deployment('model = "m"\ngpu_memory_reserved = 13000\ngpu_memory_utilization = 0.5\n', "vllm"))
    assert found.path == "deployments.llm"
    assert found.message == "set gpu_memory_reserved (MB) or gpu_memory_utilization (fraction), not both"


@pytest.mark.parametrize("body", ["gpu_memory_reserved = 13000\n", "gpu_memory_utilization = 0.5\n"])
def test_either_gpu_memory_limit_alone_is_fine(body):
    dep = spec(deployment('model = "m"\n' + body, "vllm")).deployments["llm"]
    key, value = body.split("=")
    assert getattr(dep, key.strip()) == float(value)


# ---------------------------------------------------------------------------------------------------------------
# ${ENV} interpolation

API_KEY_SPEC = 'name = "demo"\n[server]\napi_key = "%s"\n[deployments.llm]\nengine = "echo"\n'


def test_env_var_present_is_substituted():
    assert spec(API_KEY_SPEC % "${AANA_KEY}", {"AANA_KEY": "sk-123"}).server.api_key == "sk-123"


def test_env_default_is_used_when_the_var_is_unset():
    assert spec(API_KEY_SPEC % "${AANA_KEY:-fallback}", {}).server.api_key == "fallback"


def test_env_var_present_wins_over_the_default():
    assert spec(API_KEY_SPEC % "${AANA_KEY:-fallback}", {"AANA_KEY": "real"}).server.api_key == "real"


def test_empty_default():
    assert spec(API_KEY_SPEC % "${AANA_KEY:-}", {}).server.api_key == ""


def test_env_var_set_to_empty_is_used_not_the_default():
    assert spec(API_KEY_SPEC % "${AANA_KEY:-fallback}", {"AANA_KEY": ""}).server.api_key == ""


def test_env_var_missing_names_the_key_the_var_and_the_fix():
    found = only_problem(API_KEY_SPEC % "${AANA_KEY}", {})
    assert found.path == "server.api_key"
    assert found.message == "environment variable AANA_KEY is not set; export it or write ${AANA_KEY:-default}"


def test_every_missing_env_var_is_reported_with_its_path():
    text = deployment('model = "${ORG}/${NAME}"\n[deployments.llm.sampling]\nstop = ["a", "${STOP}"]\n')
    found = problems(text, {})
    assert [(p.path, p.message.split(" is not set")[0]) for p in found] == [
        ("deployments.llm.model", "environment variable ORG"),
        ("deployments.llm.model", "environment variable NAME"),
        ("deployments.llm.sampling.stop[1]", "environment variable STOP"),
    ]


def test_env_inside_a_longer_string_and_several_in_one_value():
    dep = spec(deployment('model = "${ORG}/${NAME:-tiny}-v${VER}"\n'), {"ORG": "acme", "VER": "2"}).deployments["llm"]
    assert dep.model == "acme/tiny-v2"


def test_env_value_is_then_validated_with_the_fields_type():
    text = 'name = "demo"\n[server]\nport = "${PORT}"\n[deployments.llm]\nengine = "echo"\n'
    assert spec(text, {"PORT": "9001"}).server.port == 9001
    found = only_problem(text, {"PORT": "x"})
    assert found.path == "server.port"
    assert_words(found.message, "integer", "(got 'x')")


def test_env_value_is_not_expanded_again():
    assert spec(API_KEY_SPEC % "${A}", {"A": "${B}", "B": "no"}).server.api_key == "${B}"


def test_keys_and_non_strings_are_not_interpolated():
    app = spec('name = "demo"\n[deployments.llm]\nengine = "echo"\nengine_args = { "${K}" = 1 }\n', {"K": "x"})
    assert app.deployments["llm"].engine_args == {"${K}": 1}


def test_text_that_is_not_a_reference_is_left_alone():
    assert spec(API_KEY_SPEC % "$HOME ${ not a ref } $", {}).server.api_key == "$HOME ${ not a ref } $"


def test_environ_defaults_to_the_process_environment(monkeypatch):
    monkeypatch.setenv("AANA_TEST_KEY", "from-os")
    text = API_KEY_SPEC % "${AANA_TEST_KEY}"
    assert parse_spec(text).server.api_key == "from-os"
    monkeypatch.delenv("AANA_TEST_KEY")
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert [p.path for p in info.value.problems] == ["server.api_key"]


# ---------------------------------------------------------------------------------------------------------------
# TOML syntax, several problems, the error's text


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('name = "demo"\n[server\n', ["line 2"]),
        ('name = "demo"\nname = "again"\n', ["line 2"]),
        ('name = "demo\n', ["line 1"]),
        ("name = demo\n", ["line 1"]),
    ],
)
def test_toml_syntax_error_is_one_problem_at_toml(text, words):
    found = only_problem(text)
    assert found.path == "<toml>"
    assert_words(found.message, "not valid TOML", *words)


def test_every_problem_is_reported_at_once():
    found = problems(
        """
        name = "demo"
        [serer]
        port = 1
        [server]
        port = 0
        [deployments.a]
        engine = "transformers"
        [deployments.b]
        engine = "echo"
        temperature = 0.5
        [deployments.b.sampling]
        top_p = 0
        [deployments.c]
        engine = "vlm"
        """
    )
    assert sorted(p.path for p in found) == [
        "deployments.a.model",
        "deployments.b.sampling.top_p",
        "deployments.b.temperature",
        "deployments.c.engine",
        "serer",
        "server.port",
    ]


def test_spec_error_text_lists_every_problem_under_the_source():
    with pytest.raises(SpecError) as info:
        parse_spec('name = "demo"\n[deployments.llm]\nengine = "echo"\nzzzz = 1\nnum_replicas = 0\n', "my.toml", {})
    lines = str(info.value).splitlines()
    assert lines[0] == "my.toml is not a valid aana spec:"
    assert lines[1:] == [f"  {p.path}: {p.message}" for p in info.value.problems]
    assert len(lines) == 3


def test_problem_str():
    assert str(Problem("a.b", "fix it")) == "a.b: fix it"


# ---------------------------------------------------------------------------------------------------------------
# load_spec


def test_load_spec_reads_the_file_and_passes_environ(tmp_path):
    path = tmp_path / "app.toml"
    path.write_text(API_KEY_SPEC % "${K}", encoding="utf-8")
    assert load_spec(path, environ={"K": "v"}).server.api_key == "v"
    assert load_spec(str(path), environ={"K": "v"}).name == "demo"


def test_load_spec_names_the_file_as_the_source(tmp_path):
    path = tmp_path / "app.toml"
    path.write_text('name = "demo"\n', encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path, environ={})
    assert info.value.source == str(path)
    assert str(info.value).startswith(f"{path} is not a valid aana spec:")


def test_load_spec_file_not_found(tmp_path):
    path = tmp_path / "missing.toml"
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.source == str(path)
    assert info.value.problems == [Problem("<file>", "no such file; check the path")]


def test_load_spec_of_a_directory(tmp_path):
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path)
    [found] = info.value.problems
    assert found.path == "<file>"
    assert_words(found.message, "cannot read it")


def test_load_spec_of_a_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'name = "d\xe9mo"\n')
    with pytest.raises(SpecError) as info:
        load_spec(path)
    [found] = info.value.problems
    assert found.path == "<file>"
    assert_words(found.message, "cannot read it", "utf-8")


# ---------------------------------------------------------------------------------------------------------------
# Dependency direction: `aana validate` and the unit tests run without the heavy libraries


def test_pure_modules_import_no_heavy_library():
    heavy = ["torch", "ray", "vllm", "transformers", "typer", "rich"]
    code = textwrap.dedent(
        f"""
        import sys
        import runtime.spec, runtime.plan, runtime.openai.protocol, runtime.engines.base
        loaded = sorted(name for name in {heavy!r} if name in sys.modules)
        print(",".join(loaded))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"imported: {result.stdout.strip()}"


# ---------------------------------------------------------------------------------------------------------------
# Autoscaling


def test_autoscaling_table_is_read_with_serves_defaults_for_what_it_leaves_out():
    dep = spec(deployment("[deployments.llm.autoscaling]\nmax_replicas = 4\n")).deployments["llm"]
    assert dep.autoscaling == AutoscalingSpec(
        min_replicas=1, max_replicas=4, target_ongoing_requests=2.0, upscale_delay_s=30.0, downscale_delay_s=600.0,
        look_back_period_s=30.0,
    )  # fmt: skip
    assert spec(ECHO).deployments["llm"].autoscaling is None


def test_every_autoscaling_key_is_read():
    dep = spec(
        deployment(
            """
            [deployments.llm.autoscaling]
            min_replicas = 2
            max_replicas = 3
            target_ongoing_requests = 1.5
            upscale_delay_s = 0
            downscale_delay_s = 5
            look_back_period_s = 12
            """
        )
    ).deployments["llm"]
    assert dep.autoscaling == AutoscalingSpec(
        min_replicas=2, max_replicas=3, target_ongoing_requests=1.5, upscale_delay_s=0, downscale_delay_s=5,
        look_back_period_s=12,
    )  # fmt: skip


def test_autoscaling_and_an_explicit_num_replicas_are_one_problem_naming_both():
    # Even num_replicas = 1, the default: a person who wrote it expects a fixed count.
    for value in (1, 3):
        found = only_problem(deployment(f"num_replicas = {value}\n[deployments.llm.autoscaling]\nmax_replicas = 2\n"))
        assert found.path == "deployments.llm"
        assert_words(found.message, "num_replicas", "[autoscaling]", "both set", "min_replicas")


@pytest.mark.parametrize(
    ("table", "path", "words"),
    [
        ("min_replicas = 0\nmax_replicas = 2", "min_replicas", ("at least 1", "GET /health", "(got 0)")),
        ("min_replicas = -1\nmax_replicas = 2", "min_replicas", ("at least 1", "(got -1)")),
        ("min_replicas = 3\nmax_replicas = 2", "max_replicas", ("at least min_replicas (3)", "(got 2)")),
        ("max_replicas = 0", "max_replicas", ("greater than or equal to 1", "(got 0)")),
        ("max_replicas = 2\ntarget_ongoing_requests = 0", "target_ongoing_requests", ("greater than 0",)),
        ("max_replicas = 2\nupscale_delay_s = -1", "upscale_delay_s", ("greater than or equal to 0", "(got -1)")),
        ("max_replicas = 2\ndownscale_delay_s = -0.5", "downscale_delay_s", ("greater than or equal to 0",)),
        ("max_replicas = 2\nlook_back_period_s = 10", "look_back_period_s", ("more than 10 s", "report")),
        ("max_replicas = 2.5", "max_replicas", ("integer", "(got 2.5)")),
    ],
)
def test_bad_autoscaling_value_names_its_key_path(table, path, words):
    found = only_problem(deployment(f"[deployments.llm.autoscaling]\n{table}\n"))
    assert found.path == f"deployments.llm.autoscaling.{path}"
    assert_words(found.message, *words)


def test_autoscaling_needs_max_replicas():
    found = only_problem(deployment("[deployments.llm.autoscaling]\nmin_replicas = 2\n"))
    assert found.path == "deployments.llm.autoscaling.max_replicas"
    assert_words(found.message, "missing required key 'max_replicas'", "Most replicas")


def test_autoscaling_keys_get_near_match_hints_in_their_table_and_from_the_deployment():
    typo = problems(deployment("[deployments.llm.autoscaling]\nmax_replica = 2\n"))
    assert (
        Problem("deployments.llm.autoscaling.max_replica", "unknown key 'max_replica'; did you mean 'max_replicas'?")
        in typo
    )
    misplaced = only_problem(deployment("max_replicas = 2\n"))
    assert misplaced.path == "deployments.llm.max_replicas"
    assert_words(misplaced.message, "did you mean 'max_replicas'", "[deployments.llm.autoscaling]")
