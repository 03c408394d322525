"""A model's own tool-call format -> content and tool calls, incrementally (tool_choice "auto").

One parser per format, named as vLLM's `--tool-call-parser` names them: `hermes` (`<tool_call>{json}</tool_call>`
blocks: Hermes, Qwen2.5 and many ChatML models), `llama3_json` (the whole output is `{json}` objects, Llama 3.1/3.2)
and `mistral` (`[TOOL_CALLS]` then a JSON array, or `name[ARGS]{json}` segments from v11 tokenizers on).

A parser takes the text in pieces split anywhere and gives back content that is safe to stream now: never a part
of a tool-call block, never a tail that may still turn into a marker. Whitespace that touches a call is not content
(the run right before a call, and what is only whitespace after one). A call is given out once its JSON is
complete; a call that never completes or does not parse goes out as content, in its original text. Streaming in
any pieces gives what one `parse` of the whole text gives.

Pure: standard library only; ids, chunks and wire names are runtime.openai.tools' business.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: str  # a JSON object as text; "{}" when the model gave none


class UnknownToolParser(ValueError):
    pass


def _call_from(value: Any) -> ParsedCall | None:
    """The call a decoded JSON value stands for: {"name", "arguments" (or "parameters")}, else None."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        return None
    arguments = value.get("arguments", value.get("parameters"))
    if arguments in (None, ""):
        arguments = {}
    elif isinstance(arguments, str):  # some models write the arguments as a JSON string holding the object
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ParsedCall(value["name"], json.dumps(arguments, ensure_ascii=False))


def _json_at(text: str, at: int, final: bool) -> tuple[Any, int] | None:
    """The JSON value at `text[at]` and where it ends. None while more text may complete it (an incomplete value and
    an invalid one look alike until the output ends); at the end, (None, at) for one that never completed."""
    try:
        return _DECODER.raw_decode(text, at)
    except ValueError:
        return (None, at) if final else None


def _until_marker(text: str, marker: str) -> tuple[str, str]:
    """`text` split before the first `marker`, or before a tail that the next piece may complete into one."""
    at = text.find(marker)
    if at >= 0:
        return text[:at], text[at:]
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return text[:-size], text[-size:]
    return text, ""


class _Content:
    """Content on its way out, minus the whitespace that touches a call. Trailing whitespace waits until the next
    text shows whether a call follows (dropped) or more content (sent)."""

    def __init__(self) -> None:
        self._held = ""
        self._bare = False  # a call was made and only whitespace came after it

    def text(self, text: str) -> str:
        body = text.rstrip()
        if not body:
            self._held += text
            return ""
        out, self._held, self._bare = self._held + body, text[len(body) :], False
        return out

    def call(self) -> None:
        self._held, self._bare = "", True

    def end(self) -> str:
        out, self._held = ("" if self._bare else self._held), ""
        return out


class ToolParser:
    """One choice's text -> (content, calls), piece by piece. A subclass's `_step` decides what it can from the start
    of `_buf` (through `_text` and `_call`) and says whether it made progress; what is left at the end is content."""

    skip_special_tokens: bool = True  # False where the markers are special tokens the detokenizer would drop

    def __init__(self) -> None:
        self._buf = ""
        self._content = _Content()
        self._out: list[str] = []
        self._calls: list[ParsedCall] = []

    def feed(self, text: str) -> tuple[str, list[ParsedCall]]:
        """The next piece of output -> content safe to stream now, and the calls it completed."""
        self._buf += text
        return self._drain(final=False)

    def finish(self) -> tuple[str, list[ParsedCall]]:
        """The end of the output -> what was held back that is content, and the calls completed only now."""
        return self._drain(final=True)

    def _drain(self, final: bool) -> tuple[str, list[ParsedCall]]:
        while self._buf and self._step(final):
            pass
        if final:
            self._text(self._buf)
            self._buf = ""
            self._out.append(self._content.end())
        out, calls = "".join(self._out), self._calls
        self._out, self._calls = [], []
        return out, calls

    def _step(self, final: bool) -> bool:
        raise NotImplementedError

    def _text(self, text: str) -> None:
        self._out.append(self._content.text(text))

    def _text_until(self, marker: str) -> bool:
        content, self._buf = _until_marker(self._buf, marker)
        self._text(content)
        return bool(content)

    def _call(self, call: ParsedCall) -> None:
        self._content.call()
        self._calls.append(call)


class HermesParser(ToolParser):
    """`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks anywhere in the text."""

    START, END = "<tool_call>", "</tool_call>"

    def _step(self, final: bool) -> bool:
        if not self._buf.startswith(self.START):
            return self._text_until(self.START)
        end = self._buf.find(self.END)
        restart = self._buf.find(self.START, len(self.START))
        if restart >= 0 and (end < 0 or restart < end):  # a marker inside the block: the first was only text
            self._text(self._buf[:restart])
            self._buf = self._buf[restart:]
            return True
        if end < 0:
            # Like vLLM, an unclosed last block is a call when its JSON is whole (the model stopped at the tag).
            call = _decoded_call(self._buf[len(self.START) :]) if final else None
            if call is not None:
                self._call(call)
                self._buf = ""
            return call is not None
        block, self._buf = self._buf[: end + len(self.END)], self._buf[end + len(self.END) :]
        call = _decoded_call(block[len(self.START) : end])
        if call is None:
            self._text(block)
        else:
            self._call(call)
        return True


def _decoded_call(body: str) -> ParsedCall | None:
    try:
        return _call_from(json.loads(body))
    except ValueError:
        return None


class Llama3JsonParser(ToolParser):
    """The whole output, after an optional `<|python_tag|>`, is `{"name": ..., "parameters": {...}}` objects
    separated by `;` or whitespace; output that starts otherwise is content."""

    TAG = "<|python_tag|>"
    _SEPARATORS = " \t\r\n;"

    def __init__(self) -> None:
        super().__init__()
        self._mode = "start"  # -> "calls" or "content"
        self._opening = ""  # the whitespace and tag before the first object: content again if that is no call

    def _step(self, final: bool) -> bool:
        if self._mode == "start":
            return self._start(final)
        if self._mode == "content":
            self._text(self._buf)
            self._buf = ""
            return True
        return self._next_call(final)

    def _start(self, final: bool) -> bool:
        head = self._buf.lstrip()
        tagged = head.startswith(self.TAG)
        rest = head[len(self.TAG) :].lstrip() if tagged else head
        if not rest or (not tagged and self.TAG.startswith(rest)):
            if not final:
                return False  # undecided yet
            self._mode = "content"
        elif rest.startswith("{"):
            self._mode, self._opening, self._buf = "calls", self._buf[: len(self._buf) - len(rest)], rest
        else:
            self._mode = "content"
        return True

    def _next_call(self, final: bool) -> bool:
        self._buf = self._buf.lstrip(self._SEPARATORS)
        if not self._buf:
            return False  # another object may follow
        if not self._buf.startswith("{"):
            self._mode = "content"  # text after the last call
            return True
        decoded = _json_at(self._buf, 0, final)
        if decoded is None:
            return False
        value, end = decoded
        call = _call_from(value)
        if call is None:  # from here on it is text; all of it when there was no call before
            self._mode, self._buf, self._opening = "content", self._opening + self._buf, ""
            return True
        self._call(call)
        self._buf, self._opening = self._buf[end:], ""
        return True


class MistralParser(ToolParser):
    """Content, then `[TOOL_CALLS]` and a JSON array of {"name", "arguments"} (or one such object), or
    `[TOOL_CALLS]name[ARGS]{...}` segments (v11+ tokenizers)."""

    skip_special_tokens = False  # [TOOL_CALLS] and [ARGS] are special tokens
    MARKER = "[TOOL_CALLS]"
    _NAMED = re.compile(r"([A-Za-z0-9_.\-]+)\[ARGS\]\s*")
    _NAME_SO_FAR = re.compile(r"[A-Za-z0-9_.\-]*")

    def _step(self, final: bool) -> bool:
        if not self._buf.startswith(self.MARKER):
            return self._text_until(self.MARKER)
        after = self._buf[len(self.MARKER) :].lstrip()
        if not after:
            return False
        if after[0] in "[{":
            return self._json_calls(after, final)
        return self._named_call(after, final)

    def _json_calls(self, text: str, final: bool) -> bool:
        decoded = _json_at(text, 0, final)
        if decoded is None:
            return False
        value, end = decoded
        calls = [_call_from(item) for item in (value if isinstance(value, list) else [value])]
        if not calls or None in calls:
            return self._not_a_call()
        for call in calls:
            self._call(call)
        self._buf = text[end:]
        return True

    def _named_call(self, text: str, final: bool) -> bool:
        named = self._NAMED.match(text)
        if named is None:
            tail = text[self._NAME_SO_FAR.match(text).end() :]
            may_become = not final and "[ARGS]".startswith(tail)
            return False if may_become else self._not_a_call()
        decoded = _json_at(text, named.end(), final)
        if decoded is None:
            return False
        arguments, end = decoded
        if not isinstance(arguments, dict):
            return self._not_a_call()
        self._call(ParsedCall(named.group(1), json.dumps(arguments, ensure_ascii=False)))
        self._buf = text[end:]
        return True

    def _not_a_call(self) -> bool:
        """The marker is content after all; what followed it is read again as text."""
        self._text(self.MARKER)
        self._buf = self._buf[len(self.MARKER) :]
        return True


PARSERS: dict[str, type[ToolParser]] = {
    "hermes": HermesParser,
    "llama3_json": Llama3JsonParser,
    "mistral": MistralParser,
}


def make_parser(name: str) -> ToolParser:
    try:
        return PARSERS[name]()
    except KeyError:
        raise UnknownToolParser(f"unknown tool parser {name!r}; known: {', '.join(PARSERS)}") from None


def parse(parser: str, text: str) -> tuple[str, list[ParsedCall]]:
    """The whole output at once: what feeding it in one piece and finishing gives."""
    tool_parser = make_parser(parser)
    content, calls = tool_parser.feed(text)
    rest, more = tool_parser.finish()
    return content + rest, calls + more
