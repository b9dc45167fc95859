"""Rank 0's request loop: commands from the node in, token events out, one JSON message a line
(`tandem.protocol.runner`: Generate, Abort, Shutdown in; Accepted, Rejected, Busy, Token,
Finished and Load out, and the KV cache's counters as CacheReport when they change).

Prompts are turned into token ids on the reader thread, not in the step loop, and each is
measured against the context before it is tokenized (`prompt_size_problem`): a prompt far too
long for the context is refused at once instead of stalling every stream while it is tokenized.

Admission: the runner holds at most its slots plus `queue_limit` requests; one more is refused
with `Busy` (the API answers 429), so a flood meets a clear answer instead of an ever-longer
queue. Counted from the requests held, not from those the engine has yet to start, so a burst
that arrives before a step is judged by the room it will find. The counts go to the node as
`Load` whenever they change, which is how the node (and its tests) see that an aborted request
left the engine.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TextIO

from tandem.engine.embedding import Embedder
from tandem.engine.engine import LLMEngine, TokenEvent
from tandem.errors import TandemError
from tandem.protocol import codec
from tandem.protocol.codec import ProtocolError
from tandem.protocol.runner import (
    CACHE_REPORT_SECONDS,
    DEFAULT_QUEUE_LIMIT,
    Abort,
    Accepted,
    Busy,
    CacheReport,
    Embedding,
    Finished,
    Generate,
    GenerateRequest,
    Load,
    Rejected,
    RunnerCommand,
    RunnerEvent,
    Shutdown,
    Token,
    TopLogprob,
)
from tandem.runner.chat_request import ChatPrompt, chat_prompt

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


def read_commands(
    stream: TextIO,
    commands: queue.Queue,
    prepare: Callable[[RunnerCommand], RunnerCommand | Rejected] | None = None,
) -> None:
    """Reader thread: parse stdin lines into the queue, each `prepare`d first (prompts tokenized
    here, off the step loop); end of input means shut down."""
    for line in stream:
        line = line.strip()
        if line:
            command = parse_command(line)
            if command is not None:
                commands.put(prepare(command) if prepare and not isinstance(command, Rejected) else command)
    commands.put(Shutdown())


def prompt_size_problem(engine: LLMEngine, request: GenerateRequest) -> str | None:
    """Why a text prompt cannot fit the context, judged from its length alone (no tokenizing):
    even at the longest token the vocabulary has, it would be too many tokens. None: it may fit."""
    tokenizer = engine.tokenizer
    if tokenizer is None or request.prompt_ids is not None:
        return None  # token ids are counted as they are (add_request)
    if request.messages is not None:
        characters = sum(len(message.content) for message in request.messages)
    else:
        characters = len(request.prompt or "")
    fewest = tokenizer.fewest_tokens(characters)
    if fewest < engine.max_context:
        return None
    return (
        f"the prompt has {characters} characters, at least {fewest} tokens, but the context holds "
        f"{engine.max_context} (prompt and reply together); shorten the prompt or raise the context size"
    )


@dataclass(frozen=True)
class Prepared:
    """A `Generate` the reader thread has measured and turned into its prompt (token ids, the
    sampling settings with any tool call forced, the model's call format): the step loop only
    queues it."""

    request_id: str
    request: GenerateRequest
    prompt: ChatPrompt


def prompt_preparer(
    engine: LLMEngine, vocab_size: int | None = None
) -> Callable[[RunnerCommand], RunnerCommand | Prepared | Rejected]:
    """What the reader thread applies to each command: a prompt is measured, then rendered and
    tokenized; one that cannot fit is rejected before tokenizing."""

    def prepare(command: RunnerCommand) -> RunnerCommand | Prepared | Rejected:
        if not isinstance(command, Generate):
            return command
        problem = prompt_size_problem(engine, command.request)
        if problem is not None:
            return Rejected(command.request_id, problem)
        try:
            prompt = prompt_of(engine, command.request, vocab_size)
        except TandemError as error:
            return Rejected(command.request_id, str(error))
        return Prepared(command.request_id, command.request, prompt)

    return prepare


def prompt_of(engine: LLMEngine, request: GenerateRequest, vocab_size: int | None = None) -> ChatPrompt:
    """The prompt's token ids and the sampling settings to run it with (a chat's tools rendered,
    a required call forced)."""
    tokenizer = engine.tokenizer
    if request.prompt_ids is not None:
        ids = list(request.prompt_ids)
        limit = vocab_size or (tokenizer.vocab_size if tokenizer else None)
        if limit is not None and any(not 0 <= t < limit for t in ids):
            raise TandemError(f"prompt_ids must be token ids between 0 and {limit - 1}")
        return ChatPrompt(ids, request.params, None)
    if tokenizer is None:
        raise TandemError("this model has no tokenizer; send prompt_ids")
    if request.messages is not None:
        return chat_prompt(tokenizer, request)
    return ChatPrompt(tokenizer.encode(request.prompt or ""), request.params, None)


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
        num_slots: int = 1,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        embedder: Embedder | str = "this model does not embed",
    ) -> None:
        self.engine = engine
        self.num_slots = num_slots
        self.queue_limit = queue_limit
        self.embedder = embedder  # or why this instance cannot embed
        self.emit = emit
        self.vocab_size = vocab_size  # token ids at or above it would index past the embedding
        self.keep_alive = keep_alive
        self.keep_alive_seconds = keep_alive_seconds
        self.request_of: dict[int, str] = {}  # seq_id -> request_id
        self.seq_of: dict[str, int] = {}
        self._reported = Load(0, 0)
        self.cache_reported = CacheReport(**asdict(engine.cache_stats()))  # the node knows the start
        self.cache_reported_at = time.monotonic()

    def handle(self, command: RunnerCommand | Prepared | Rejected) -> bool:
        """Apply one command; False when it asks the loop to stop."""
        match command:
            case Shutdown():
                return False
            case Rejected():
                self.emit(command)
            case Prepared(request_id, request, prompt):
                self._generate(request_id, request, prompt)
            case Generate(request_id, request):
                self._generate(request_id, request, None)
            case Abort(request_id) if request_id in self.seq_of:
                seq_id = self.seq_of.pop(request_id)
                self.request_of.pop(seq_id, None)
                self.engine.abort(seq_id)
                self.emit(Finished(request_id, "abort"))
        return True

    def waiting(self) -> int:
        """Requests queued in the engine that have not started (no KV cache held yet)."""
        return len(self.engine.scheduler.waiting)

    def load(self) -> Load:
        return Load(requests=len(self.seq_of), waiting=self.waiting())

    def report_load(self) -> None:
        """Send the counts when they changed since the last report."""
        load = self.load()
        if load != self._reported:
            self._reported = load
            self.emit(load)

    def _generate(self, request_id: str, request: GenerateRequest, prompt: ChatPrompt | None) -> None:
        """Queue a request (`prompt`: as the reader thread prepared it; None: prepared here)."""
        if request.embed:
            self._embed(request_id, request, prompt)
            return
        if request.image is not None:
            self.emit(
                Rejected(
                    request_id, "model: this is a text model; it cannot make images (use an image model)"
                )
            )
            return
        resumed = list(request.resume_ids)
        held = len(self.seq_of)
        if held >= self.num_slots + self.queue_limit:
            self.emit(
                Busy(
                    request_id,
                    f"the instance's queue is full ({held} requests: {self.num_slots} slots and "
                    f"a queue limit of {self.queue_limit}); retry shortly",
                )
            )
            return
        try:
            prompt = prompt or prompt_of(self.engine, request, self.vocab_size)
            params = prompt.params
            if resumed:
                params = replace(params, max_tokens=params.max_tokens - len(resumed), resumed=len(resumed))
            seq_id = self.engine.add_request(prompt.prompt_ids + resumed, params)
        except TandemError as error:
            self.emit(Rejected(request_id, str(error)))
            return
        self.request_of[seq_id] = request_id
        self.seq_of[request_id] = seq_id
        self.emit(Accepted(request_id, len(prompt.prompt_ids), prompt.tool_format))

    def _embed(self, request_id: str, request: GenerateRequest, prompt: ChatPrompt | None) -> None:
        """Embeddings run at once, between engine steps: one forward pass over the input."""
        if isinstance(self.embedder, str):
            self.emit(Rejected(request_id, self.embedder))
            return
        try:
            ids = (prompt or prompt_of(self.engine, request, self.vocab_size)).prompt_ids
            vector = self.embedder.embed(ids)
        except TandemError as error:
            self.emit(Rejected(request_id, str(error)))
            return
        self.emit(Accepted(request_id, len(ids)))
        self.emit(Embedding(request_id, tuple(vector), self.embedder.pooling.normalize))

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
            self.report_load()
            for event in self.engine.step():
                self.publish(event)
            self.report_load()
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
