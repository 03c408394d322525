"""`aana logs` and `aana chat` as a person runs them, against one real `aana up` of two echo models (a separate
ingress in front): the logs of a request just sent, with its model on each line; following until Ctrl-C; one-shot
answers on stdout; the conversation under a pseudo-terminal (history, Ctrl-C during a slow answer, /exit).

`ask(base_url, model, question)` is the one-shot client the SmolLM2 acceptance uses too.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pexpect
import pytest
from e2e.server import AanaServer, aana_command, interrupt, run_aana, serving

pytestmark = pytest.mark.e2e

SPEC = """
name = "logchat"
[deployments.echo]
engine = "echo"
num_cpus = 0.2
[deployments.slow]
engine = "echo"
num_cpus = 0.2
token_delay_s = 0.3
"""
QUESTION = "What is the capital of France?"


def ask(base_url: str, model: str, question: str, timeout_s: float = 300) -> str:
    """`aana chat MODEL QUESTION --url BASE_URL`: the answer it printed (stdout holds the answer alone)."""
    result = run_aana("chat", model, question, "--url", base_url, timeout_s=timeout_s)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[AanaServer]:
    folder = tmp_path_factory.mktemp("logchat")
    spec = folder / "logchat.toml"
    spec.write_text(SPEC)
    with pytest.MonkeyPatch.context() as env:
        # A database of its own, so `aana usage` counts this module's requests alone.
        env.setenv("AANA_DATABASE_URL", f"sqlite:///{folder / 'aana.db'}")
        with serving(spec, folder) as running:
            yield running


def _chat(server: AanaServer, model: str, request_id: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hello logs"}]}
    reply = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, headers={"X-Request-ID": request_id},
                       timeout=60)  # fmt: skip
    assert reply.status_code == 200, reply.text


def _lines_with(text: str, output: str) -> list[str]:
    return [line for line in output.splitlines() if text in line]


def test_logs_show_the_request_on_the_ingress_and_the_model_each_prefixed(server):
    request_id = f"logs-{uuid.uuid4().hex[:12]}"
    _chat(server, "echo", request_id)
    shown = run_aana("logs", "--since", "5m")
    assert shown.returncode == 0, shown.stderr
    ingress = _lines_with(request_id, shown.stdout)
    # Serve's access log: the ingress answered the HTTP request, the model replica the call it made for it.
    assert any(line.startswith("OpenAIIngress | ") and "POST /v1/chat/completions 200" in line for line in ingress)
    assert any(line.startswith("echo          | ") for line in ingress), shown.stdout

    only_echo = run_aana("logs", "--model", "echo")
    assert only_echo.returncode == 0 and only_echo.stdout
    assert all(line.startswith("echo |") for line in only_echo.stdout.splitlines()), only_echo.stdout
    assert _lines_with(request_id, only_echo.stdout)

    assert run_aana("logs", "--since", "2000-01-01", "--model", "slow").stdout.count("slow |") >= 1
    assert _lines_with(request_id, run_aana("logs", "--since", "1s").stdout) == []  # sent before that

    unknown = run_aana("logs", "--model", "nope")
    assert unknown.returncode == 1 and "no model 'nope'" in unknown.stderr and "echo" in unknown.stderr
    missing = run_aana("logs", "--app", "nope")
    assert missing.returncode == 2 and "no app named 'nope'" in missing.stderr


def test_follow_shows_a_request_sent_after_it_started_and_stops_on_ctrl_c(server):
    before, after = f"before-{uuid.uuid4().hex[:8]}", f"after-{uuid.uuid4().hex[:8]}"
    _chat(server, "echo", before)
    follower = subprocess.Popen([*aana_command(), "logs", "--follow", "--model", "echo"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=os.environ | {"COLUMNS": "120"})  # fmt: skip
    seen: list[str] = []

    def read() -> None:
        for line in follower.stdout:
            seen.append(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        _wait_for(lambda: any(before in line for line in seen), follower, "the lines logged so far")
        _chat(server, "echo", after)
        _wait_for(lambda: any(after in line for line in seen), follower, "the request sent while following")
    finally:
        code = interrupt(follower, timeout_s=30)
    assert code == 0, follower.stderr.read()
    assert all(line.startswith("echo | ") for line in seen)


def _wait_for(condition, process: subprocess.Popen, what: str, hang_guard_s: float = 60) -> None:
    """Until `condition()`; the guard only stops a test that would otherwise wait forever."""
    deadline = time.monotonic() + hang_guard_s
    while not condition():
        assert process.poll() is None, f"aana logs exited ({process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"aana logs did not show {what} within {hang_guard_s:g} s"
        time.sleep(0.1)


def test_chat_one_shot_prints_only_the_answer(server):
    assert ask(server.base_url, "echo", QUESTION) == QUESTION + "\n"
    # Without --url: the app this machine's `aana up` serves the model from (its local record).
    found = run_aana("chat", "echo", QUESTION)
    assert (found.returncode, found.stdout) == (0, QUESTION + "\n"), found.stderr
    unknown = run_aana("chat", "nope", QUESTION, "--url", server.base_url)
    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert "The model `nope` does not exist" in unknown.stderr


def test_chat_conversation_under_a_terminal(server):
    child = pexpect.spawn(aana_command()[0], ["chat", "slow", "--url", server.base_url], encoding="utf-8",
                          timeout=60, env=os.environ | {"COLUMNS": "120", "TERM": "dumb"})  # fmt: skip
    try:
        child.expect_exact(">>> ")
        child.sendline("one two")
        child.expect_exact("one two\r\n")  # the echo of the typed line, then the answer
        child.expect_exact("one two\r\n")
        child.expect_exact(">>> ")
        child.sendline("three")
        child.expect_exact("three\r\n")
        child.expect_exact("three\r\n")
        child.expect_exact(">>> ")
        # The second turn carried the first: prompt tokens (words + 2 per message, as the echo engine counts)
        # are 4 for the first request and 4 + 4 + 3 for the second; without history the second would be 3.
        assert _usage_of("slow", requests=2)["prompt_tokens"] == 15

        words = " ".join(f"w{i}" for i in range(20))  # 0.3 s a word: 6 s if not stopped
        child.sendline(words)
        child.expect_exact(words + "\r\n")  # the terminal's echo of the typed line
        child.expect_exact("w0 w1")  # the answer has begun
        child.sendintr()
        child.expect_exact(">>> ", timeout=5)  # back at the prompt long before the answer would have ended
        assert "(answer stopped)" in child.before and "w19" not in child.before
        child.sendline("/exit")
        child.expect(pexpect.EOF, timeout=30)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before


def _usage_of(model: str, requests: int, hang_guard_s: float = 60) -> dict:
    """`aana usage --model MODEL` totals once it counts `requests` (the recorder writes in batches, off the request
    path; the guard only stops a test that would otherwise wait forever)."""
    deadline = time.monotonic() + hang_guard_s
    while True:
        result = run_aana("usage", "--model", model, "--json")
        assert result.returncode == 0, result.stderr
        totals = json.loads(result.stdout)["totals"]
        if totals["requests"] >= requests:
            return totals
        assert time.monotonic() < deadline, f"aana usage never counted {requests} requests: {totals}"
        time.sleep(0.5)
