"""Streamed answers (server-sent events, JSON lines) that own their generation, and answers that
are not streamed but still notice when their client leaves.

Either way, a client that goes away mid-request aborts the request on its runner: a streamed
answer's task is cancelled by Starlette when the connection drops, and `GenerationResponse`
closes the generation however the stream ended; an answer that is not streamed races the
generation against the connection's `http.disconnect`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import anyio
from fastapi import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from tandem.api.errors import ClientGone
from tandem.api.generation import Completion, Generation

T = TypeVar("T")
CLOSE_TIMEOUT_SECONDS = 5.0
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering


def sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent event: an optional `event:` line, then the JSON data line."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {payload}\n\n".encode()


def json_line(data: Any) -> bytes:
    return (json.dumps(data, separators=(",", ":")) + "\n").encode()


class GenerationResponse(StreamingResponse):
    """A streamed answer that closes its generation when the stream ends for any reason."""

    def __init__(self, body: AsyncIterator[bytes], generation: Generation, media_type: str) -> None:
        super().__init__(body, media_type=media_type, headers=STREAM_HEADERS)
        self.generation = generation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Shielded: when the client went away this task is being cancelled, and the abort
            # must still reach the runner.
            with anyio.move_on_after(CLOSE_TIMEOUT_SECONDS, shield=True):
                await self.generation.aclose()


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (raises ClientGone)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise ClientGone
    return task.result()


async def collect(request: Request, generation: Generation) -> Completion:
    """The whole completion of a request whose answer is not streamed."""
    try:
        return await unless_disconnected(request, generation.collect())
    finally:
        await generation.aclose()
