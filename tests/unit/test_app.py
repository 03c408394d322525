"""runtime.app.build_app: the Serve application a plan becomes, inspected without starting Ray."""

from __future__ import annotations

from runtime.app import ModelDeployment, ModelIngress, OpenAIIngress, build_app
from runtime.export import SERVE_ENV_DEFAULTS
from runtime.plan import HEALTH_PROBE_HEADROOM, INGRESS_NAME, Access, build_plan
from runtime.records import Recording
from runtime.spec import parse_spec

SPEC = """
name = "t"
[server]
api_key = "k"
[deployments.a]
engine = "echo"
num_replicas = 2
num_cpus = 0.5
max_ongoing_requests = 4
[deployments.b]
engine = "echo"
[deployments.b.sampling]
temperature = 0.3
"""


def test_one_model_deployment_per_model_and_an_ingress_bound_to_their_handles_and_cards(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plan = build_plan(parse_spec(SPEC))
    ingress = build_app(plan, Recording("sqlite:///x.db", "run-1"))._bound_deployment
    assert (ingress.name, ingress.func_or_class, ingress.num_replicas) == (INGRESS_NAME, OpenAIIngress, 1)
    assert ingress.ray_actor_options == {"num_cpus": plan.ingress_num_cpus}
    app_name, cards, handles, access, recording, replicas, max_body_bytes, allowed_hosts = ingress.init_args
    assert (app_name, replicas, max_body_bytes) == ("t", 1, 8 << 20)
    assert allowed_hosts == ("localhost", "127.0.0.1", "::1")  # the default bind is loopback
    assert cards == plan.cards and [c.sampling for c in cards] == [{}, {"temperature": 0.3}]
    assert (access, recording) == (Access(api_key="k"), Recording("sqlite:///x.db", "run-1"))
    assert list(handles) == ["a", "b"]
    a = handles["a"]._bound_deployment
    # Ray may send a replica every request the ingress admits (2 x 4 running + 16 queued) plus health probes: the
    # replica itself holds generation to max_ongoing_requests, so a probe never waits behind it.
    assert (a.name, a.func_or_class, a.num_replicas) == ("a", ModelDeployment, 2)
    assert a.max_ongoing_requests == 2 * 4 + 16 + HEALTH_PROBE_HEADROOM
    assert a.init_args == (plan.deployments[0],)
    assert a.ray_actor_options["num_cpus"] == 0.5
    env = a.ray_actor_options["runtime_env"]["env_vars"]
    assert env["HF_HUB_OFFLINE"] == "1" and SERVE_ENV_DEFAULTS.items() <= env.items()


def test_ingress_replicas_from_the_spec_or_the_cluster_size():
    plan = build_plan(parse_spec(SPEC))
    assert plan.with_ingress_replicas(2).ingress_replicas == 1  # a 2-core machine keeps its CPU for the model
    assert plan.with_ingress_replicas(4).ingress_replicas == 2
    pinned = build_plan(parse_spec(SPEC.replace('api_key = "k"', 'api_key = "k"\ningress_replicas = 3')))
    assert pinned.with_ingress_replicas(64).ingress_replicas == 3
    ingress = build_app(pinned.with_ingress_replicas(64))._bound_deployment
    assert ingress.num_replicas == 3 and ingress.init_args[5] == 3


def test_an_app_of_one_model_is_one_deployment_that_answers_http_itself(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    one = 'name = "t"\n[server]\napi_key = "k"\n[deployments.a]\nengine = "echo"\nnum_replicas = 2\nnum_cpus = 0.5\n'
    plan = build_plan(parse_spec(one)).with_ingress_replicas(64)
    assert not plan.separate_ingress and plan.ingress_replicas is None and plan.ingress_cpus == 0
    model = build_app(plan, Recording("sqlite:///x.db", "run-1"))._bound_deployment
    assert (model.name, model.func_or_class, model.num_replicas) == ("a", ModelIngress, 2)
    assert model.ray_actor_options["num_cpus"] == 0.5
    assert model.init_args == (plan.deployments[0], "t", Access(api_key="k"), Recording("sqlite:///x.db", "run-1"), 8 << 20,
                               ("localhost", "127.0.0.1", "::1"), plan.cards, {})  # fmt: skip
    for separate in ('ingress = "separate"', "ingress_replicas = 1"):
        plan = build_plan(parse_spec(one.replace('api_key = "k"', f'api_key = "k"\n{separate}')))
        ingress = build_app(plan.with_ingress_replicas(2))._bound_deployment
        assert (plan.separate_ingress, ingress.name, ingress.func_or_class) == (True, INGRESS_NAME, OpenAIIngress)


def test_an_embedding_model_beside_one_text_model_is_reached_from_the_text_models_replicas(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = (
        'name = "t"\n[deployments.chat]\nengine = "echo"\n'
        '[deployments.vec]\nengine = "sentence_transformers"\nmodel = "/m"\nnum_cpus = 0.25\n'
    )
    plan = build_plan(parse_spec(spec)).with_ingress_replicas(64)
    assert (plan.front, plan.separate_ingress, plan.http_deployment, plan.ingress_cpus) == ("chat", False, "chat", 0)
    front = build_app(plan)._bound_deployment
    assert (front.name, front.func_or_class) == ("chat", ModelIngress)
    cards, handles = front.init_args[6:]
    assert [c.id for c in cards] == ["chat", "vec"] and [c.task for c in cards] == ["generate", "embed"]
    [vec] = handles.values()
    assert (vec._bound_deployment.name, vec._bound_deployment.func_or_class) == ("vec", ModelDeployment)
    two_text_models = spec.replace('"sentence_transformers"\nmodel = "/m"', '"echo"')
    assert build_plan(parse_spec(two_text_models)).front is None  # several text models: a separate ingress
