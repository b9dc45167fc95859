"""One request's generation as the API routes see it.

A generation is started before the HTTP answer begins: the runner's first event says whether it
took the request, so a rejection (a prompt longer than the context, bad settings) gets a proper
status code instead of a broken stream. Tokens follow; closing the generation, however the
answer ends, aborts the request if it is still running and frees its KV-cache slot.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from tandem.api.errors import APIError, context_code
from tandem.cluster.state import Instance
from tandem.errors import TandemError, UnknownInstance
from tandem.model.tool_calls import FormatName
from tandem.protocol.runner import Accepted, Rejected, RequestEvent, Token

log = logging.getLogger("tandem.api")


class GenerationFailed(TandemError):
    """The request failed after its answer began (the runner exited, a peer went away)."""


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
        self, events: AsyncIterator[RequestEvent], release: Callable[[], None], instance: Instance
    ) -> None:
        self.events = events
        self.release = release
        self.instance = instance
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
            await self.aclose()
            raise APIError(404, str(error), code="model_not_found") from None
        except (TandemError, StopAsyncIteration) as error:
            await self.aclose()
            detail = str(error) or "the instance ended the request before taking it"
            raise APIError(503, f"instance {self.instance.instance_id} is not available: {detail}") from None
        except BaseException:
            await self.aclose()
            raise
        if isinstance(first, Accepted):
            self.prompt_tokens = first.prompt_tokens
            self.tool_format = first.tool_format
            self.accepted_at = time.monotonic()
            return
        self.finished = True
        await self.aclose()
        message = getattr(first, "message", None) or type(first).TAG
        if isinstance(first, Rejected):
            raise APIError(400, message, code=context_code(message))
        raise APIError(503, f"instance {self.instance.instance_id} failed the request: {message}")

    async def tokens(self) -> AsyncIterator[Token]:
        """The token events; the last one carries `finish_reason`. Raises GenerationFailed."""
        try:
            async for event in self.events:
                if isinstance(event, Token):
                    self.completion_tokens += 1
                    self.first_token_at = self.first_token_at or time.monotonic()
                    self.finished = event.finish_reason is not None
                    if self.finished:
                        self.ended_at = time.monotonic()
                        self.release()  # the instance is done with it, before the client hears so
                    yield event
                    if self.finished:
                        return
                elif not isinstance(event, Accepted):
                    self.finished = True
                    raise GenerationFailed(getattr(event, "message", None) or "the request was aborted")
        except GenerationFailed:
            raise
        except TandemError as error:  # the stream from another node broke
            self.finished = True
            raise GenerationFailed(str(error)) from None
        self.finished = True
        raise GenerationFailed("the instance's event stream ended before the request finished")

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

    async def aclose(self) -> None:
        """End the request: abort it if it is still running (its slot comes back); idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self.finished:
                log.info(
                    "instance %s: the client left after %d tokens; aborting its request",
                    self.instance.instance_id,
                    self.completion_tokens,
                )
            await self.events.aclose()  # type: ignore[attr-defined]
        finally:
            self.release()
