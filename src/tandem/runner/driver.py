"""Rank 0's request loop: commands from the node in, token events out (JSON lines).

Commands (node → runner, one JSON object per line on stdin):
  {"op": "generate", "request_id": str, "prompt": str | "messages": [...] | "prompt_ids": [...],
   "params": {SamplingParams fields}}
  {"op": "abort", "request_id": str}
  {"op": "shutdown"}
Events (runner → node, stdout): see `emit` calls; every event names its request when it has one.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from tandem.engine.engine import LLMEngine, TokenEvent
from tandem.errors import TandemError
from tandem.model.sampling_params import SamplingParams

Emit = Callable[[dict[str, Any]], None]


def line_emitter(stream: TextIO) -> Emit:
    lock = threading.Lock()

    def emit(event: dict[str, Any]) -> None:
        with lock:
            stream.write(json.dumps(event) + "\n")
            stream.flush()

    return emit


def read_commands(stream: TextIO, commands: queue.Queue) -> None:
    """Reader thread: parse stdin lines into the queue; end of input means shut down."""
    for line in stream:
        line = line.strip()
        if line:
            try:
                commands.put(json.loads(line))
            except json.JSONDecodeError:
                print(f"runner: ignoring a malformed command line: {line[:80]}", file=sys.stderr)
    commands.put({"op": "shutdown"})


def prompt_ids_of(engine: LLMEngine, command: dict[str, Any], vocab_size: int | None = None) -> list[int]:
    tokenizer = engine.tokenizer
    if "prompt_ids" in command:
        ids = [int(t) for t in command["prompt_ids"]]
        limit = vocab_size or (tokenizer.vocab_size if tokenizer else None)
        if limit is not None and any(not 0 <= t < limit for t in ids):
            raise TandemError(f"prompt_ids must be token ids between 0 and {limit - 1}")
        return ids
    if tokenizer is None:
        raise TandemError("this model has no tokenizer; send prompt_ids")
    if "messages" in command:
        return tokenizer.encode_chat(command["messages"])
    return tokenizer.encode(str(command.get("prompt", "")))


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

    def handle(self, command: dict[str, Any]) -> bool:
        """Apply one command; False when it asks the loop to stop."""
        op = command.get("op")
        if op == "shutdown":
            return False
        request_id = str(command.get("request_id", ""))
        if op == "generate":
            self._generate(request_id, command)
        elif op == "abort" and request_id in self.seq_of:
            seq_id = self.seq_of.pop(request_id)
            self.request_of.pop(seq_id, None)
            self.engine.abort(seq_id)
            self.emit({"event": "finished", "request_id": request_id, "finish_reason": "abort"})
        return True

    def _generate(self, request_id: str, command: dict[str, Any]) -> None:
        try:
            params = SamplingParams.from_dict(command.get("params") or {})
            prompt_ids = prompt_ids_of(self.engine, command, self.vocab_size)
            seq_id = self.engine.add_request(prompt_ids, params)
        except TandemError as error:
            self.emit({"event": "rejected", "request_id": request_id, "message": str(error)})
            return
        except Exception as error:  # a malformed command rejects its request, never the runner
            message = f"malformed request: {type(error).__name__}: {error}"
            self.emit({"event": "rejected", "request_id": request_id, "message": message})
            return
        self.request_of[seq_id] = request_id
        self.seq_of[request_id] = seq_id
        self.emit({"event": "accepted", "request_id": request_id, "prompt_tokens": len(prompt_ids)})

    def publish(self, event: TokenEvent) -> None:
        request_id = self.request_of.get(event.seq_id)
        if request_id is None:
            return
        message: dict[str, Any] = {
            "event": "token",
            "request_id": request_id,
            "token_id": event.token_id,
            "text": event.text,
        }
        if event.logprob is not None:
            message["token"] = self.token_text(event.token_id)
            message["logprob"] = event.logprob
            message["top_logprobs"] = [
                {"token_id": token_id, "token": self.token_text(token_id), "logprob": logprob}
                for token_id, logprob in event.top_logprobs or []
            ]
        if event.finish_reason is not None:
            message["finish_reason"] = str(event.finish_reason)
            if event.stop_sequence is not None:
                message["stop_sequence"] = event.stop_sequence
            self.request_of.pop(event.seq_id, None)
            self.seq_of.pop(request_id, None)
        self.emit(message)

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
