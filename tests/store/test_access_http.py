"""Keys, limits and stored completions over HTTP, in-process: the official openai client against the ingress over
echo replicas, with keys made by `runtime.store.keys` in a real database (SQLite and PostgreSQL), read into the
ingress's key ring as the replica's key watch reads them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import openai
import pytest
from fastapi.testclient import TestClient
from in_process import serve, start_servers

from runtime.openai.auth import Authenticator, KeyGrant, KeyRing
from runtime.openai.ingress import create_app
from runtime.openai.quotas import Quotas
from runtime.openai.stored import StoredCompletions
from runtime.plan import build_plan
from runtime.spec import parse_spec
from runtime.store import migrate
from runtime.store.keys import create_key, list_keys, revoke_key

SPEC = """
name = "t"
[deployments.chat]
engine = "echo"
[deployments.other]
engine = "echo"
"""
HI = [{"role": "user", "content": "one two three"}]


class InProcessQuotas:
    """`Quotas` behind the async interface the ingress calls (in an app: one Ray actor)."""

    def __init__(self) -> None:
        self.quotas = Quotas()

    async def take(self, *args):
        return self.quotas.take(*args)

    async def settle(self, *args):
        self.quotas.settle(*args)


class Served:
    def __init__(self, database_url: str, api_key: str | None = None, mode: str = "auto"):
        migrate.upgrade(database_url)
        self.url = database_url
        self.ring = KeyRing()
        plan = build_plan(parse_spec(SPEC))
        servers = start_servers(plan)
        app = create_app(servers, plan.cards, api_key, auth=Authenticator(api_key, self.ring, mode),
                         quotas=InProcessQuotas(), stored=StoredCompletions(database_url, 30))  # fmt: skip
        self.http = TestClient(app)

    def refresh(self) -> None:  # what the replica's key watch does every 2 s
        self.ring.replace(KeyGrant.of(key) for key in list_keys(self.url))

    def client(self, key: str | None) -> openai.OpenAI:
        return openai.OpenAI(api_key=key or "none", base_url="http://testserver/v1", http_client=self.http,
                             max_retries=0)  # fmt: skip


@pytest.fixture
def served(database_url):
    return Served(database_url)


def test_keys_turn_auth_on_and_a_key_reaches_only_its_models(served):
    open_client = served.client(None)
    assert open_client.chat.completions.create(model="chat", messages=HI).choices[0].message.content  # no keys yet
    _, alice = create_key(served.url, "alice", models=["chat"])
    served.refresh()
    with pytest.raises(openai.AuthenticationError):
        open_client.chat.completions.create(model="chat", messages=HI)
    with pytest.raises(openai.AuthenticationError):
        served.client(alice[:-2] + "xx").chat.completions.create(model="chat", messages=HI)
    client = served.client(alice)
    assert client.chat.completions.create(model="chat", messages=HI).choices[0].message.content == "one two three"
    with pytest.raises(openai.NotFoundError) as caught:  # as if it did not exist
        client.chat.completions.create(model="other", messages=HI)
    assert "other" not in caught.value.body["message"].split("Available models:")[1]
    assert [m.id for m in client.models.list()] == ["chat"]
    assert served.http.get("/live").status_code == 200
    assert served.http.get("/health").status_code == 401
    assert served.http.get("/health", headers={"authorization": f"Bearer {alice}"}).status_code == 200


def test_revoked_and_expired_keys_are_refused(served):
    _, alice = create_key(served.url, "alice")
    _, late = create_key(served.url, "late", expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
    served.refresh()
    assert served.client(alice).models.list()
    with pytest.raises(openai.AuthenticationError):
        served.client(late).models.list()
    revoke_key(served.url, "alice")
    served.refresh()
    with pytest.raises(openai.AuthenticationError):
        served.client(alice).models.list()


def test_the_specs_api_key_works_beside_the_keys(database_url):
    served = Served(database_url, api_key="spec-key")
    create_key(served.url, "alice")
    served.refresh()
    assert [m.id for m in served.client("spec-key").models.list()] == ["chat", "other"]


def test_keys_mode_refuses_everyone_before_any_key_exists(database_url):
    served = Served(database_url, mode="keys")
    with pytest.raises(openai.AuthenticationError):
        served.client(None).models.list()


def test_requests_per_minute_beyond_the_limit_get_429_with_the_rate_limit_headers(served):
    _, key = create_key(served.url, "limited", rpm=5)
    served.refresh()
    headers = {"authorization": f"Bearer {key}"}
    answers = [served.http.post("/v1/chat/completions", json={"model": "chat", "messages": HI}, headers=headers)
               for _ in range(6)]  # fmt: skip
    assert [a.status_code for a in answers] == [200] * 5 + [429]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers[:5]] == ["4", "3", "2", "1", "0"]
    assert all(a.headers["x-ratelimit-limit-requests"] == "5" for a in answers)
    refused = answers[-1]
    assert int(refused.headers["retry-after"]) >= 1 and refused.headers["x-ratelimit-reset-requests"].endswith("s")
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    with pytest.raises(openai.RateLimitError):
        served.client(key).with_options(max_retries=0).chat.completions.create(model="chat", messages=HI)


def test_tokens_per_minute_count_the_estimate_then_what_was_used(served):
    _, key = create_key(served.url, "tokens", tpm=100)
    served.refresh()
    client = served.client(key)
    ask = {"model": "chat", "messages": HI, "max_tokens": 40}
    first = client.chat.completions.with_raw_response.create(**ask)
    # At admission the request takes its estimate: about chars / 4 of prompt, plus the 40 it may generate.
    reserved = 100 - int(first.headers["x-ratelimit-remaining-tokens"])
    assert 40 < reserved < 100
    # When it ends the estimate becomes what it used, so the next request finds that much gone, not the estimate.
    used = first.parse().usage.total_tokens
    second = client.chat.completions.with_raw_response.create(**ask)
    assert int(second.headers["x-ratelimit-remaining-tokens"]) == 100 - used - reserved
    too_big = served.http.post("/v1/chat/completions", json=ask | {"max_tokens": 500},
                               headers={"authorization": f"Bearer {key}"})  # fmt: skip
    assert (
        too_big.status_code == 429
        and "more than this key's 100 tokens per minute" in too_big.json()["error"]["message"]
    )


def test_stored_completions_belong_to_the_key_that_made_them(database_url):
    served = Served(database_url)
    _, alice = create_key(served.url, "alice")
    _, bob = create_key(served.url, "bob")
    served.refresh()
    client = served.client(alice)
    made = [client.chat.completions.create(model="chat", messages=HI, store=True, metadata={"n": str(i)})
            for i in range(3)]  # fmt: skip
    streamed = list(client.chat.completions.create(model="chat", messages=HI, store=True, stream=True))
    assert client.chat.completions.retrieve(made[0].id).choices[0].message.content == "one two three"
    assert client.chat.completions.retrieve(streamed[0].id).choices[0].message.content == "one two three"
    listed = client.chat.completions.list(limit=2)
    assert [c.id for c in listed.data] == [m.id for m in made[:2]] and listed.has_more
    assert [c.id for c in client.chat.completions.list(after=made[1].id)] == [made[2].id, streamed[0].id]
    assert [c.id for c in client.chat.completions.list(metadata={"n": "1"})] == [made[1].id]
    messages = client.chat.completions.messages.list(made[0].id)
    assert [(m.role, m.content) for m in messages.data] == [("user", "one two three")]
    with pytest.raises(openai.NotFoundError):
        served.client(bob).chat.completions.retrieve(made[0].id)
    assert list(served.client(bob).chat.completions.list()) == []
    deleted = client.chat.completions.delete(made[0].id)
    assert deleted.deleted and deleted.id == made[0].id
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(made[0].id)


def test_store_true_is_a_400_where_completions_are_not_stored(tmp_path):
    http = serve(SPEC).http
    response = http.post("/v1/chat/completions", json={"model": "chat", "messages": HI, "store": True})
    assert response.status_code == 400 and response.json()["error"]["param"] == "store"
    assert http.post("/v1/chat/completions", json={"model": "chat", "messages": HI, "store": False}).status_code == 200
    missing = http.get("/v1/chat/completions/x")
    assert missing.status_code == 404 and "store_completions is off" in missing.json()["error"]["message"]


def test_until_the_keys_are_read_only_the_specs_key_gets_in(tmp_path):
    plan = build_plan(parse_spec(SPEC))
    servers = start_servers(plan)
    ring = KeyRing(loaded=False)  # the database has not answered yet
    http = TestClient(create_app(servers, plan.cards, "spec-key", auth=Authenticator("spec-key", ring)))
    refused = http.get("/v1/models", headers={"authorization": "Bearer aana-whatever_x"})
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "keys_unavailable"
    assert http.get("/v1/models").status_code == 503  # not open either
    assert http.get("/v1/models", headers={"authorization": "Bearer spec-key"}).status_code == 200
    ring.replace([])
    assert http.get("/v1/models").status_code == 401  # read: no keys, and the spec's key is required
