"""`aana chat` in-process: the conversation loop and one-shot answers against the real ingress over echo replicas,
through the official openai client (a TestClient as its HTTP client), so a test reads the exact messages each turn
sent from the engine's history. Ctrl-C during a real stream under a terminal is tests/e2e/test_cli_logs_chat.py's.
"""

from __future__ import annotations

import os
import time

import pytest
import typer
from in_process import serve
from typer.testing import CliRunner

from aana_cli import chat_cmd
from aana_cli.chat_cmd import Chat, ChatError, interactive, one_shot
from runtime import local_apps

pytestmark = pytest.mark.unit

SPEC = """
name = "t"
[deployments.echo]
engine = "echo"
token_delay_s = 0.02  # a word per delta: the reader keeps up, so nothing is coalesced
"""
QUESTION = "What is the capital of France?"


@pytest.fixture
def served():
    """(an openai client on the in-process app, the echo engine behind it)."""
    app = serve(SPEC)
    return app.client, app.servers["echo"].engine


class Terminal:
    """Scripted typing: each item is a line, or an exception that `input()` raises there (EOFError: Ctrl-D,
    KeyboardInterrupt: Ctrl-C at the prompt). `shown` is what reached stdout."""

    def __init__(self, *typed: str | BaseException):
        self.typed = list(typed)
        self.shown: list[str] = []

    def read(self, prompt: str) -> str:
        self.shown.append(prompt)
        item = self.typed.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def write(self, text: str) -> None:
        self.shown.append(text)

    @property
    def text(self) -> str:
        return "".join(self.shown)


def _sent(engine) -> list[list[tuple[str, str]]]:
    """The (role, content) pairs of each request the engine received."""
    return [[(m["role"], m["content"]) for m in request.messages] for request in engine.history]


def test_one_shot_prints_only_the_streamed_answer(served):
    client, engine = served
    pieces: list[str] = []
    assert one_shot(Chat(client, "echo", system="Answer briefly."), QUESTION, pieces.append) == 0
    assert "".join(pieces) == QUESTION + "\n"
    assert len(pieces) > 2  # streamed word by word, not printed at the end
    assert _sent(engine) == [[("system", "Answer briefly."), ("user", QUESTION)]]


def test_one_shot_reports_the_servers_message_for_an_unknown_model(served, capsys):
    client, _ = served
    pieces: list[str] = []
    assert one_shot(Chat(client, "nope"), QUESTION, pieces.append) == 1
    assert pieces == []
    err = capsys.readouterr().err
    assert "The model `nope` does not exist. Available models: echo (HTTP 404)" in " ".join(err.split())


def test_each_turn_sends_the_conversation_so_far(served):
    client, engine = served
    terminal = Terminal("one two", "three", "/exit")
    assert interactive(Chat(client, "echo", system="Be terse."), terminal.read, terminal.write) == 0
    assert terminal.text == ">>> one two\n>>> three\n>>> "
    assert _sent(engine) == [
        [("system", "Be terse."), ("user", "one two")],
        [("system", "Be terse."), ("user", "one two"), ("assistant", "one two"), ("user", "three")],
    ]


def test_ctrl_c_during_an_answer_keeps_what_came_and_returns_to_the_prompt(served, capsys):
    client, engine = served
    terminal = Terminal("a b c d e f", "g", "/exit")
    written = terminal.write

    def interrupt_at_the_third_word(text: str) -> None:
        written(text)
        if text == " c":
            raise KeyboardInterrupt

    terminal.write = interrupt_at_the_third_word
    assert interactive(Chat(client, "echo"), terminal.read, terminal.write) == 0
    assert terminal.text == ">>> a b c\n>>> g\n>>> "
    assert "(answer stopped)" in capsys.readouterr().err
    assert _sent(engine)[1] == [("user", "a b c d e f"), ("assistant", "a b c"), ("user", "g")]


def test_ctrl_c_at_the_prompt_stays_ctrl_d_leaves_and_a_failed_turn_is_forgotten(served, capsys):
    client, engine = served
    chat = Chat(client, "echo")
    terminal = Terminal(KeyboardInterrupt(), "", "/help", "hi", EOFError())
    engine.enqueue([RuntimeError("engine fell over")])
    assert interactive(chat, terminal.read, terminal.write) == 0
    err = capsys.readouterr().err
    assert "(/exit or Ctrl-D leaves)" in err and "/clear" in err and "error:" in err
    assert chat.messages == []  # the failed question left no trace in the history
    assert len(engine.history) == 1  # blank lines and /help never reached the server


def test_clear_forgets_all_but_the_system_message(served):
    client, engine = served
    terminal = Terminal("one", "/clear", "two", "/exit")
    assert interactive(Chat(client, "echo", system="S"), terminal.read, terminal.write) == 0
    assert _sent(engine)[1] == [("system", "S"), ("user", "two")]


def test_turn_raises_chat_error_with_the_server_message(served):
    client, _ = served
    chat = Chat(client, "nope")
    with pytest.raises(ChatError, match="does not exist"):
        chat.turn("hi", lambda _: None)
    assert chat.messages == []


# -- the command: URL, key, exit codes ------------------------------------------------------------------------


@pytest.fixture
def cli():
    app = typer.Typer()
    chat_cmd.register(app)

    @app.callback()
    def main() -> None:  # keeps `chat` a subcommand, as in the real app
        pass

    return app


def test_the_url_defaults_to_the_app_that_serves_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("AANA_STATE_DIR", str(tmp_path))
    assert chat_cmd.default_url("echo") == "http://localhost:8000"
    for app, port, started in (("a", 9001, 1.0), ("b", 9002, 2.0)):
        local_apps.save(local_apps.AppRecord(app, os.getpid(), "127.0.0.1:1", f"http://localhost:{port}",
                                             [app, "shared"], time.time() + started, owns_ray=True))  # fmt: skip
    assert chat_cmd.default_url("a") == "http://localhost:9001"
    assert chat_cmd.default_url("shared") == "http://localhost:9002"  # the newest of those serving it
    assert chat_cmd.default_url("other") == "http://localhost:9002"  # none serves it: the newest app
    assert chat_cmd.api_base("http://h:1/") == chat_cmd.api_base("http://h:1/v1") == "http://h:1/v1"


def test_an_unreachable_server_is_exit_1_with_the_reason_on_stderr(cli, monkeypatch):
    monkeypatch.delenv("AANA_API_KEY", raising=False)
    result = CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["chat", "echo", "--url", "http://127.0.0.1:9", "hi"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "cannot reach http://127.0.0.1:9/v1/" in result.stderr


def test_an_empty_stdin_is_a_usage_error(cli):
    result = CliRunner().invoke(cli, ["chat", "echo", "--url", "http://127.0.0.1:9"], input="")
    assert result.exit_code == 2
    assert "no prompt" in result.stderr


def test_the_api_key_comes_from_the_environment(served, monkeypatch):
    seen: list[str] = []
    monkeypatch.setattr(chat_cmd, "make_client", lambda url, key: seen.append(key) or served[0])
    monkeypatch.setenv("OPENAI_API_KEY", "from-openai")
    monkeypatch.delenv("AANA_API_KEY", raising=False)
    assert chat_cmd.run("echo", "hi", "http://x", None, None) == 0
    monkeypatch.setenv("AANA_API_KEY", "from-aana")
    assert chat_cmd.run("echo", "hi", "http://x", None, None) == 0
    assert chat_cmd.run("echo", "hi", "http://x", None, "explicit") == 0
    monkeypatch.delenv("AANA_API_KEY")
    monkeypatch.delenv("OPENAI_API_KEY")
    assert chat_cmd.run("echo", "hi", "http://x", None, None) == 0
    assert seen == ["from-openai", "from-aana", "explicit", "none"]
