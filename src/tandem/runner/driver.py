"""Rank 0's request loop: commands from the node in, token events out, one JSON message a line
(`tandem.protocol.runner`: Generate, Abort, Shutdown in; Accepted, Rejected, Token, Finished out,
and the KV cache's counters as CacheReport when they change).
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TextIO

from tandem.engine.engine import LLMEngine, TokenEvent
from tandem.errors import TandemError
from tandem.protocol import codec
from tandem.protocol.codec import ProtocolError
from tandem.protocol.runner import (
    CACHE_REPORT_SECONDS,
    Abort,
    Accepted,
    CacheReport,
    Finished,
    Generate,
    GenerateRequest,
    Rejected,
    RunnerCommand,
    RunnerEvent,
    Shutdown,
    Token,
    TopLogprob,
)

Emit = Callable[[RunnerEvent], None]


def line_emitter(stream: TextIO) -> Emit:
    lock = threading.Lock()

    def emit(event: RunnerEvent) -> None:
        line = codec.encode(event).decode() + "\n"
        with lock:
            stream.write(line)
            stream.flush()

    return emit


def parse_command(line: str) -> RunnerCommand | Rejected | None:
    """One stdin line as a command; a malformed one as the rejection of its request (when it
    names one), else None (logged)."""
    try:
        return codec.decode(RunnerCommand, line)
    except ProtocolError as error:
        try:
            request_id = json.loads(line).get("request_id")
        except (json.JSONDecodeError, AttributeError):
            request_id = None
        if isinstance(request_id, str):
            return Rejected(request_id, f"malformed request: {error}")
        print(f"runner: ignoring a malformed command ({error}): {line[:80]}", file=sys.stderr)
        return None


def read_commands(stream: TextIO, commands: queue.Queue) -> None:
    """Reader thread: parse stdin lines into the queue; end of input means shut down."""
    for line in stream:
        line = line.strip()
        if line:
            command = parse_command(line)
            if command is not None:
                commands.put(command)
    commands.put(Shutdown())


def prompt_ids_of(engine: LLMEngine, request: GenerateRequest, vocab_size: int | None = None) -> list[int]:
    tokenizer = engine.tokenizer
    if request.prompt_ids is not None:
        ids = list(request.prompt_ids)
        limit = vocab_size or (tokenizer.vocab_size if tokenizer else None)
        if limit is not None and any(not 0 <= t < limit for t in ids):
            raise TandemError(f"prompt_ids must be token ids between 0 and {limit - 1}")
        return ids
    if tokenizer is None:
        raise TandemError("this model has no tokenizer; send prompt_ids")
    if request.messages is not None:
        return tokenizer.encode_chat([{"role": m.role, "content": m.content} for m in request.messages])
    return tokenizer.encode(request.prompt or "")


class Driver:
    """Feeds commands to the engine and its events back to the node.

    `keep_alive`, when given, is called after every `keep_alive_seconds` without work: the other
    ranks wait in a receive or a collective, which gloo and NCCL abandon after the process
    group's timeout, so an idle instance must show them it is alive."""

    def __init__(
        self,
        engine: LLMEngine,
        emit: Emit,
        vocab_size: int | None = None,
        keep_alive: Callable[[], None] | None = None,
        keep_alive_seconds: float = 60.0,
    ) -> None:
        self.engine = engine
        self.emit = emit
        self.vocab_size = vocab_size  # token ids at or above it would index past the embedding
        self.keep_alive = keep_alive
        self.keep_alive_seconds = keep_alive_seconds
        self.request_of: dict[int, str] = {}  # seq_id -> request_id
        self.seq_of: dict[str, int] = {}
        self.cache_reported = CacheReport(**asdict(engine.cache_stats()))  # the node knows the start
        self.cache_reported_at = time.monotonic()

    def handle(self, command: RunnerCommand | Rejected) -> bool:
        """Apply one command; False when it asks the loop to stop."""
        match command:
            case Shutdown():
                return False
            case Rejected():
                self.emit(command)
            case Generate(request_id, request):
                self._generate(request_id, request)
            case Abort(request_id) if request_id in self.seq_of:
                seq_id = self.seq_of.pop(request_id)
                self.request_of.pop(seq_id, None)
                self.engine.abort(seq_id)
                self.emit(Finished(request_id, "abort"))
        return True

    def _generate(self, request_id: str, request: GenerateRequest) -> None:
        try:
            prompt_ids = prompt_ids_of(self.engine, request, self.vocab_size)
            seq_id = self.engine.add_request(prompt_ids, request.params)
        except TandemError as error:
            self.emit(Rejected(request_id, str(error)))
            return
        self.request_of[seq_id] = request_id
        self.seq_of[request_id] = seq_id
        self.emit(Accepted(request_id, len(prompt_ids)))

    def publish(self, event: TokenEvent) -> None:
        request_id = self.request_of.get(event.seq_id)
        if request_id is None:
            return
        token, top = None, None
        if event.logprob is not None:
            token = self.token_text(event.token_id)
            top = tuple(
                TopLogprob(token_id, self.token_text(token_id), logprob)
                for token_id, logprob in event.top_logprobs or ()
            )
        finish = None
        if event.finish_reason is not None:
            finish = event.finish_reason.value
            self.request_of.pop(event.seq_id, None)
            self.seq_of.pop(request_id, None)
        self.emit(
            Token(
                request_id=request_id,
                token_id=event.token_id,
                text=event.text,
                token=token,
                logprob=event.logprob,
                top_logprobs=top,
                finish_reason=finish,  # type: ignore[arg-type]
                stop_sequence=event.stop_sequence if finish else None,
            )
        )

    def token_text(self, token_id: int) -> str:
        """One token decoded alone (for logprobs); a piece of a multi-byte character shows as U+FFFD."""
        tokenizer = self.engine.tokenizer
        return tokenizer.decode([token_id], skip_special_tokens=False) if tokenizer else ""

    def run(self, commands: queue.Queue) -> None:
        while True:
            idle = not self.engine.has_work()
            try:
                command = commands.get(block=idle, timeout=self.keep_alive_seconds if idle else None)
            except queue.Empty:
                command = None
                if idle and self.keep_alive is not None:
                    self.keep_alive()
            while command is not None:
                if not self.handle(command):
                    return
                try:
                    command = commands.get_nowait()
                except queue.Empty:
                    command = None
            for event in self.engine.step():
                self.publish(event)
            self.report_cache()

    def report_cache(self) -> None:
        """Emit the cache's counters where they changed, once the engine is idle or a report is
        `CACHE_REPORT_SECONDS` old (not after every step: blocks change nearly every step)."""
        report = CacheReport(**asdict(self.engine.cache_stats()))
        if report == self.cache_reported:
            return
        now = time.monotonic()
        if self.engine.has_work() and now - self.cache_reported_at < CACHE_REPORT_SECONDS:
            return
        self.emit(report)
        self.cache_reported, self.cache_reported_at = report, now
