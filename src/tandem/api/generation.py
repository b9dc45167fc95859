"""One request's generation as the API routes see it.

A generation is started before the HTTP answer begins: the runner's first event says whether it
took the request, so a rejection (a prompt longer than the context, bad settings: 400; a full
queue: 429 with Retry-After) gets a proper status code instead of a broken stream. Tokens follow; closing the generation, however the
answer ends, aborts the request if it is still running and frees its KV-cache slot.

When the instance is lost mid-answer (a node left, a runner died), the generation resumes on
the instance that replaces it (`node/healing.py`): the prompt and the tokens already sent are
computed again there and the stream goes on from the next token, none lost and none repeated.
A request that reaches the instance as it breaks, before it was taken, starts on the replacement.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from tandem.api.errors import APIError, context_code
from tandem.api.metrics import RequestTimer
from tandem.cluster.state import Instance
from tandem.errors import TandemError, UnknownInstance
from tandem.model.tool_calls import FormatName
from tandem.protocol.images import ImageProgress, Images
from tandem.protocol.runner import Accepted, Busy, Embedding, Rejected, RequestError, RequestEvent, Token

log = logging.getLogger("tandem.api")

RETRY_AFTER_SECONDS = 1  # what a 429 for a full queue tells the client to wait


class GenerationFailed(TandemError):
    """The request failed after its answer began (the runner exited, a peer went away)."""


@dataclass
class Resumed:
    """Where a lost request goes on: the replacement's events (its `Accepted`, here, already
    read), the instance, and the function that counts the request out of it."""

    events: AsyncIterator[RequestEvent]
    instance: Instance
    release: Callable[[], None]
    accepted: Accepted


# Given the failed instance and the token ids sent so far: the request started again elsewhere.
# Raises GenerationFailed (with the reason) when there is nowhere to go on.
Resume = Callable[[Instance, tuple[int, ...]], Awaitable[Resumed]]
MAX_RESUMES = 3


@dataclass
class Completion:
    """Everything a finished request produced, for answers that are not streamed."""

    text: str
    completion_tokens: int
    finish_reason: str  # "stop" | "length"
    stop_sequence: str | None
    tokens: list[Token] = field(default_factory=list)  # the token events, for logprobs


class Generation:
    def __init__(
        self,
        events: AsyncIterator[RequestEvent],
        release: Callable[[], None],
        instance: Instance,
        timer: RequestTimer,
        resume: Resume | None = None,
    ) -> None:
        self.events = events
        self.release = release
        self.instance = instance
        self.timer = timer
        self.resume = resume
        self.sent_ids: list[int] = []
        self.resumes = 0
        self.prompt_tokens = 0
        self.tool_format: FormatName | None = None  # how the model writes calls, once accepted
        self.completion_tokens = 0
        self.finished = False
        self.started_at = time.monotonic()
        self.accepted_at: float | None = None
        self.first_token_at: float | None = None
        self.ended_at: float | None = None
        self._closed = False

    async def start(self) -> None:
        """Wait for the runner to accept the request; raise APIError if it does not."""
        try:
            first = await anext(self.events)  # type: ignore[call-overload]
        except UnknownInstance as error:
            self.timer.finished("failed")
            await self.aclose()
            raise APIError(404, str(error), code="model_not_found") from None
        except (TandemError, StopAsyncIteration) as error:
            first = RequestError(str(error) or "the instance ended the request before taking it")
        except BaseException:
            await self.aclose()
            raise
        if isinstance(first, RequestError) and self.resume is not None:
            first = await self._resume_before_accepted(first.message)
        if isinstance(first, Accepted):
            self.prompt_tokens = first.prompt_tokens
            self.tool_format = first.tool_format
            self.accepted_at = time.monotonic()
            self.timer.accepted(first.prompt_tokens)
            return
        self.finished = True
        outcome = (
            "rejected" if isinstance(first, Rejected) else "refused" if isinstance(first, Busy) else "failed"
        )
        self.timer.finished(outcome)
        await self.aclose()
        message = getattr(first, "message", None) or type(first).TAG
        if isinstance(first, Rejected):
            raise APIError(400, message, code=context_code(message))
        if isinstance(first, Busy):
            raise APIError(
                429,
                f"instance {self.instance.instance_id} ({self.instance.model}): {message}",
                code="rate_limit_exceeded",
                retry_after=RETRY_AFTER_SECONDS,
            )
        raise APIError(503, f"instance {self.instance.instance_id} failed the request: {message}")

    async def _resume_before_accepted(self, message: str) -> Accepted:
        """The instance broke as the request reached it (a stage was lost): the request starts
        on the replacement instead. APIError 503 when there is none."""
        try:
            return await self._resume_elsewhere(GenerationFailed(message))
        except GenerationFailed as error:
            await self.aclose()
            raise APIError(503, f"instance {self.instance.instance_id} is not available: {error}") from None
        except BaseException:
            await self.aclose()
            raise

    async def tokens(self) -> AsyncIterator[Token]:
        """The token events; the last one carries `finish_reason`. Raises GenerationFailed."""
        while True:
            try:
                async for event in self._tokens_from_this_instance():
                    yield event
                return
            except GenerationFailed as error:
                if self.resume is None or self.resumes >= MAX_RESUMES:
                    self.finished = True
                    self.timer.finished("failed")
                    raise
                await self._resume_elsewhere(error)

    async def _tokens_from_this_instance(self) -> AsyncIterator[Token]:
        try:
            async for event in self.events:
                if isinstance(event, Token):
                    self.completion_tokens += 1
                    self.sent_ids.append(event.token_id)
                    self.first_token_at = self.first_token_at or time.monotonic()
                    self.timer.token()
                    self.finished = event.finish_reason is not None
                    if self.finished:
                        self.ended_at = time.monotonic()
                        self.timer.finished("ok")
                        self.release()  # the instance is done with it, before the client hears so
                    yield event
                    if self.finished:
                        return
                elif not isinstance(event, Accepted):
                    raise GenerationFailed(getattr(event, "message", None) or "the request was aborted")
        except GenerationFailed:
            raise
        except TandemError as error:  # the stream from another node broke
            raise GenerationFailed(str(error)) from None
        raise GenerationFailed("the instance's event stream ended before the request finished")

    async def _resume_elsewhere(self, error: GenerationFailed) -> Accepted:
        """Go on where the lost instance's replacement runs (its acceptance returned);
        GenerationFailed if there is none."""
        assert self.resume is not None
        self.resumes += 1
        log.warning(
            "instance %s lost a request after %d tokens (%s); resuming it",
            self.instance.instance_id,
            len(self.sent_ids),
            error,
        )
        lost = self.instance
        with contextlib.suppress(BaseException):
            await self.events.aclose()  # type: ignore[attr-defined]
        self.release()
        try:
            resumed = await self.resume(lost, tuple(self.sent_ids))
        except GenerationFailed:
            self.finished = True
            self.timer.finished("failed")
            raise
        self.events, self.instance, self.release = resumed.events, resumed.instance, resumed.release
        return resumed.accepted
        log.info("request resumed on instance %s", self.instance.instance_id)

    async def collect(self) -> Completion:
        """Run to the end; for answers that are not streamed. A failure becomes a 503."""
        texts: list[str] = []
        tokens: list[Token] = []
        try:
            async for event in self.tokens():
                texts.append(event.text)
                tokens.append(event)
        except GenerationFailed as error:
            raise APIError(
                503, f"the request failed on instance {self.instance.instance_id}: {error}"
            ) from None
        finally:
            await self.aclose()
        last = tokens[-1]
        return Completion(
            text="".join(texts),
            completion_tokens=len(tokens),
            finish_reason=last.finish_reason or "stop",
            stop_sequence=last.stop_sequence,
            tokens=tokens,
        )

    async def embedding(self) -> Embedding:
        """The embedding of an `embed` request, its one event after `Accepted`; closes the
        generation. A failure is a 503."""
        try:
            event: RequestEvent = await anext(self.events)  # type: ignore[call-overload]
        except (TandemError, StopAsyncIteration) as error:
            event = RequestError(str(error) or "the event stream ended before the embedding")
        except BaseException:
            await self.aclose()  # the client left: counted as aborted
            raise
        self.finished = True
        self.timer.finished("ok" if isinstance(event, Embedding) else "failed")
        await self.aclose()
        if isinstance(event, Embedding):
            return event
        message = getattr(event, "message", None) or type(event).TAG
        raise APIError(503, f"the request failed on instance {self.instance.instance_id}: {message}")

    async def image_events(self) -> AsyncIterator[ImageProgress | Images]:
        """An image request's progress after each step, then its `Images` (the last event).
        Raises GenerationFailed (image requests are not resumed elsewhere)."""
        try:
            async for event in self.events:
                if isinstance(event, ImageProgress):
                    yield event
                elif isinstance(event, Images):
                    self.finished = True
                    self.ended_at = time.monotonic()
                    self.timer.finished("ok")
                    self.release()
                    yield event
                    return
                elif not isinstance(event, Accepted):
                    self.finished = True
                    self.timer.finished("failed")
                    raise GenerationFailed(getattr(event, "message", None) or "the request was aborted")
        except TandemError as error:
            if isinstance(error, GenerationFailed):
                raise
            raise GenerationFailed(str(error)) from None
        raise GenerationFailed("the instance's event stream ended before the images")

    async def aclose(self) -> None:
        """End the request: abort it if it is still running (its slot comes back); idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self.finished:
                self.timer.finished("aborted")
                log.info(
                    "instance %s: the client left after %d tokens; aborting its request",
                    self.instance.instance_id,
                    self.completion_tokens,
                )
            await self.events.aclose()  # type: ignore[attr-defined]
        finally:
            self.release()
