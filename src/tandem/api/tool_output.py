"""The calls in a model's answer, for the API routes: read at the end of an answer, and while
streaming, text held back from where a call may begin so no call leaks out as plain text."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from tandem.model.tool_calls import FormatName, ParsedOutput, parse_tool_calls, start_marker


@dataclass(frozen=True)
class Call:
    """A call as the APIs report it, with an id that a later `tool` message refers to."""

    id: str
    name: str
    arguments: str  # JSON text


def call_id(prefix: str = "call_") -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def read_calls(format_name: FormatName | None, text: str, prefix: str = "call_") -> tuple[str, list[Call]]:
    """The plain text and the calls of a whole answer (no calls where no tools were offered)."""
    if format_name is None:
        return text, []
    parsed: ParsedOutput = parse_tool_calls(format_name, text)
    return parsed.content, [Call(call_id(prefix), name, arguments) for name, arguments in parsed.calls]


class CallStream:
    """Streamed text with calls held back: `push` gives what can be shown now, `finish` the rest
    of the text and the calls."""

    def __init__(self, format_name: FormatName | None, prefix: str = "call_") -> None:
        self.format_name: FormatName | None = format_name
        self.prefix = prefix
        self.marker = start_marker(format_name) if format_name else None
        self.text = ""
        self.shown = 0  # characters of `text` already given out

    def push(self, piece: str) -> str:
        self.text += piece
        if self.marker is None:
            shown, self.shown = self.shown, len(self.text)
            return self.text[shown:]
        start = self.text.find(self.marker, self.shown)
        if start >= 0:
            safe = start
        else:  # hold back a tail that may be the marker's beginning
            safe = len(self.text)
            for length in range(min(len(self.marker) - 1, len(self.text)), 0, -1):
                if self.marker.startswith(self.text[-length:]):
                    safe = len(self.text) - length
                    break
        safe = max(safe, self.shown)
        shown, self.shown = self.shown, safe
        return self.text[shown:safe]

    def finish(self) -> tuple[str, list[Call]]:
        """The text not yet shown and the calls (an answer without calls shows all its text)."""
        content, calls = read_calls(self.format_name, self.text, self.prefix)
        if not calls:
            return self.text[self.shown :], []
        shown = self.text[: self.shown]
        rest = content[len(shown) :] if content.startswith(shown) else ""
        return rest, calls
