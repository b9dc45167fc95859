"""Read-only views of the cluster for the dashboard and other watchers:

- `GET /v1/events`: server-sent events. An `event: state` message carries the same JSON as
  `GET /v1/cluster` at once and again whenever the node's copy of the cluster state changes;
  a comment line keeps idle connections open through proxies.
- `GET /v1/cluster/models`: the models this node can launch, with size and whether each fits
  the cluster now (`tandem.node.models`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from tandem.node.codec import state_to_json
from tandem.node.models import describe_card, describe_model, find_models
from tandem.store.catalog import catalog

STATE_POLL_SECONDS = 0.1  # the state is an immutable value replaced on change: cheap to compare
KEEP_ALIVE_SECONDS = 15.0
RECONNECT_MILLISECONDS = 2000  # how soon a browser's EventSource retries after losing us


def cluster_view(node: Any) -> dict[str, Any]:
    """What `GET /v1/cluster` and each `state` event carry."""
    return {"self": node.node_id, **state_to_json(node.state)}


async def state_events(node: Any) -> AsyncIterator[bytes]:
    """SSE messages: the state now, then each new state, until the node shuts down."""
    yield f"retry: {RECONNECT_MILLISECONDS}\n\n".encode()
    sent = None
    last_write = time.monotonic()
    while not node.closing.is_set():
        state = node.state
        if state is not sent:
            sent = state
            data = json.dumps(cluster_view(node), separators=(",", ":"))
            yield f"event: state\nid: {state.version}\ndata: {data}\n\n".encode()
            last_write = time.monotonic()
        elif time.monotonic() - last_write > KEEP_ALIVE_SECONDS:
            yield b": keep-alive\n\n"
            last_write = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(node.closing.wait(), STATE_POLL_SECONDS)


def cluster_views_router(node: Any) -> APIRouter:
    router = APIRouter()

    @router.get(
        "/v1/events",
        summary="Server-sent events: the cluster state now and whenever it changes",
        response_class=StreamingResponse,
    )
    async def events() -> StreamingResponse:
        return StreamingResponse(
            state_events(node),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.get("/v1/cluster/models", summary="Models this node can launch, and whether each fits now")
    async def models() -> dict[str, Any]:
        found = find_models(node.options.models_dirs)

        # planning may read a config from disk or the Hub: keep it off the event loop
        def describe_all():
            local = [describe_model(m, node.instances.plan) for m in found]
            return local + [describe_card(card, node.instances.plan_shape) for card in catalog()]

        listings = await asyncio.to_thread(describe_all)
        return {"models": [listing.to_json() for listing in listings]}

    return router
