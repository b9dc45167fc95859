"""Streaming text out of a token stream: whole UTF-8 characters only, and stop strings cut cleanly."""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT_CHARACTER = "\ufffd"
CONTEXT_TOKENS = 5  # prompt tokens kept as left context, so the first word keeps its leading space

Decode = Callable[[Sequence[int]], str]


class IncrementalDetokenizer:
    """Turns tokens into text deltas.

    A byte-level token can end in the middle of a multi-byte character; decoding then yields
    U+FFFD, so text is held back until a later token completes the character. Each delta is the
    difference between decoding a short window with and without the newest tokens, which keeps
    tokenizer-specific spacing rules (such as SentencePiece's leading space) right.
    """

    def __init__(self, decode: Decode, prompt_ids: Sequence[int] = ()) -> None:
        self._decode = decode
        self._tokens: list[int] = list(prompt_ids[-CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._tokens)

    def push(self, token_id: int) -> str:
        """Add one token; return the newly completed text (possibly empty)."""
        self._tokens.append(token_id)
        prefix_text = self._decode(self._tokens[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._tokens[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT_CHARACTER):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._tokens)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back when the stream ends (an incomplete character stays U+FFFD)."""
        prefix_text = self._decode(self._tokens[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._tokens[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._tokens)
        return new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""


class StopMatcher:
    """Finds stop strings in streamed text.

    Text that could be the start of a stop string is held back until it is clearly not; when a
    stop string completes, the text before it is released and the stop string itself is not.
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self._stop = [s for s in stop if s]
        self._pending = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the stream

    def feed(self, text: str) -> str:
        """Add streamed text; return what is safe to emit now."""
        if self.stopped:
            return ""
        if not self._stop:
            return text
        self._pending += text
        hits = [(self._pending.find(s), s) for s in self._stop if s in self._pending]
        if hits:
            index, self.matched = min(hits, key=lambda hit: hit[0])
            self.stopped = True
            released, self._pending = self._pending[:index], ""
            return released
        hold = self._longest_partial_match()
        released = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(self._pending) - hold :]
        return released

    def _longest_partial_match(self) -> int:
        """Length of the longest suffix of the pending text that begins some stop string."""
        best = 0
        for stop in self._stop:
            for length in range(min(len(stop) - 1, len(self._pending)), best, -1):
                if stop.startswith(self._pending[-length:]):
                    best = length
                    break
        return best

    def flush(self) -> str:
        """At the end of the stream, release what was held back."""
        released, self._pending = ("" if self.stopped else self._pending), ""
        return released
