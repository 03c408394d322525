"""`aana chat`: talk to a model of a running app with the official openai client.

With a prompt (or text on stdin) it is one-shot: only the answer reaches stdout, streamed, so scripts can use it. On a
terminal without a prompt it is a conversation: each turn sends the whole history, the answer streams as it comes,
Ctrl-C stops an answer (what came stays in the history) and returns to the prompt, `/exit` or Ctrl-D leaves.
Exit codes: 0 done; 1 the server said no or could not be reached (its message on stderr); 2 bad usage; 130 Ctrl-C
during a one-shot answer.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Optional

import typer

from aana_cli import console
from aana_cli.help_text import RUN_PANEL, epilog
from runtime import local_apps

if TYPE_CHECKING:
    import openai

DEFAULT_URL = "http://localhost:8000"
PROMPT = ">>> "
COMMANDS = {"/exit": "leave (Ctrl-D too)", "/clear": "forget the conversation so far", "/help": "this list"}

EPILOG = epilog(
    [
        ("aana chat smollm2", "a conversation; /exit or Ctrl-D leaves"),
        ('aana chat smollm2 "What is the capital of France?"', "one answer, to stdout"),
        ("git diff | aana chat smollm2 --system 'Review this diff.'", "the prompt from stdin"),
        ("aana chat gpt-4o-mini --url https://api.openai.com/v1", "any OpenAI-compatible server"),
    ],
    [
        (0, "done"),
        (1, "the server said no or cannot be reached (its message on stderr)"),
        (2, "bad usage"),
        (130, "Ctrl-C during a one-shot answer"),
    ],
)

Write = Callable[[str], None]


class ChatError(Exception):
    """A turn failed: the server's own message, or why it could not be reached."""


def default_url(model: str) -> str:
    """The base URL of the app this machine's `aana up` serves `model` from (else the newest app), else localhost."""
    records = local_apps.running()
    serving = [r for r in records if model in r.models] or records
    return serving[0].base_url if serving else DEFAULT_URL


def api_base(url: str) -> str:
    """The openai client's base_url: the server's URL with `/v1` (added when the user left it out)."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


class Chat:
    """One conversation with one model: the history, and a turn that streams the answer through `write`."""

    def __init__(self, client: openai.OpenAI, model: str, system: str | None = None):
        self.client, self.model, self.system = client, model, system
        self.messages: list[dict[str, str]] = []
        self.clear()

    def clear(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def turn(self, prompt: str, write: Write) -> str:
        """Send the history plus `prompt`; stream the answer to `write`; keep both in the history.

        Ctrl-C (KeyboardInterrupt) while the answer streams closes the stream (the server stops generating), keeps
        what arrived and propagates. Raises ChatError, leaving the history as it was, when the server says no."""
        self.messages.append({"role": "user", "content": prompt})
        answer: list[str] = []
        pieces = self._stream()
        try:
            for piece in pieces:
                answer.append(piece)
                write(piece)
        except ChatError:
            self.messages.pop()
            raise
        except KeyboardInterrupt:
            self._keep("".join(answer))
            raise
        finally:
            pieces.close()  # closes the HTTP stream at once, so the server stops generating
        self._keep("".join(answer))
        return "".join(answer)

    def _keep(self, answer: str) -> None:
        if answer:
            self.messages.append({"role": "assistant", "content": answer})
        else:  # nothing came back: as if the question was never asked
            self.messages.pop()

    def _stream(self) -> Iterator[str]:
        import openai

        try:
            with self.client.chat.completions.create(model=self.model, messages=self.messages, stream=True) as stream:
                for chunk in stream:
                    for choice in chunk.choices:
                        if choice.index == 0 and choice.delta.content:
                            yield choice.delta.content
                        if choice.index == 0 and choice.finish_reason == "length":
                            console.err.print("\n[dim](the answer reached its token limit)[/]", end="")
        except openai.APIConnectionError as exc:
            raise ChatError(f"cannot reach {self.client.base_url}: {exc.__cause__ or exc}") from None
        except openai.APIStatusError as exc:
            raise ChatError(_server_message(exc)) from None
        except openai.APIError as exc:  # an error event in the middle of the stream
            raise ChatError(exc.message) from None


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    message = body.get("message") if isinstance(body.get("message"), str) else exc.message
    return f"{message} (HTTP {exc.status_code})"


def _stdout(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def one_shot(chat: Chat, prompt: str, write: Write = _stdout) -> int:
    try:
        chat.turn(prompt, write)
    except ChatError as exc:
        console.error(str(exc))
        return 1
    except KeyboardInterrupt:
        write("\n")
        return 130
    write("\n")
    return 0


def interactive(chat: Chat, read: Callable[[str], str] = input, write: Write = _stdout) -> int:
    """The prompt loop; returns the exit code (0: the user left)."""
    console.err.print(f"[dim]chatting with {console.escape(chat.model)}; /help lists commands, /exit leaves[/]")
    while True:
        try:
            text = read(PROMPT)
        except EOFError:  # Ctrl-D
            write("\n")
            return 0
        except KeyboardInterrupt:  # at the prompt: a fresh line, as in a shell
            write("\n")
            console.err.print("[dim](/exit or Ctrl-D leaves)[/]")
            continue
        command = text.strip()
        if not command:
            continue
        if command in ("/exit", "/quit", "/bye"):
            return 0
        if command == "/clear":
            chat.clear()
            console.err.print("[dim](conversation cleared)[/]")
            continue
        if command.startswith("/") and " " not in command:
            for name, meaning in COMMANDS.items():
                console.err.print(f"[dim]{name:<8} {meaning}[/]")
            continue
        try:
            chat.turn(text, write)
            write("\n")
        except KeyboardInterrupt:
            write("\n")
            console.err.print("[dim](answer stopped)[/]")
        except ChatError as exc:
            console.error(str(exc))


def make_client(url: str, api_key: str) -> openai.OpenAI:
    import openai

    return openai.OpenAI(base_url=api_base(url), api_key=api_key, max_retries=0)


def run(model: str, prompt: str | None, url: str | None, system: str | None, api_key: str | None) -> int:
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read()
        if not prompt.strip():
            console.error("no prompt: give one as an argument or on stdin, or run on a terminal for a conversation")
            return 2
    key = api_key or os.environ.get("AANA_API_KEY") or os.environ.get("OPENAI_API_KEY") or "none"
    chat = Chat(make_client(url or default_url(model), key), model, system)
    if prompt is not None:
        return one_shot(chat, prompt)
    try:
        import readline  # noqa: F401  (line editing and up-arrow history for input())
    except ImportError:  # not on every platform
        pass
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C stops an answer, even if SIGINT was ignored
    return interactive(chat)


def register(app: typer.Typer) -> None:
    """Add `aana chat` to the command-line app."""

    @app.command(rich_help_panel=RUN_PANEL, epilog=EPILOG)
    def chat(
        model: str = typer.Argument(..., help="The model to talk to, as the app names it (`aana status` lists them)."),
        prompt: Optional[str] = typer.Argument(
            None, help="Ask this, print the answer and exit (default: a conversation, or the prompt from stdin)."
        ),
        url: Optional[str] = typer.Option(
            None,
            "--url",
            help=f"The server (with or without /v1); default: the app this machine's `aana up` serves MODEL from, "
            f"else {DEFAULT_URL}.",
        ),
        system: Optional[str] = typer.Option(None, "--system", "-s", help="A system message to start with."),
        api_key: Optional[str] = typer.Option(
            None, "--api-key", help="The key to send (default: $AANA_API_KEY, else $OPENAI_API_KEY, else none)."
        ),
    ) -> None:
        """Talk to a model of a running app: a conversation on a terminal, or one answer to stdout for scripts."""
        raise typer.Exit(run(model, prompt, url, system, api_key))
