"""The public cluster API (`/v1/cluster`, `/v1/instances`, ...) and the read-only views the
dashboard watches:

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
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from tandem.api.cluster_schemas import ClusterView, GenerateEvent, PlacementPreview, StoppedInstance
from tandem.api.openapi import stream_response
from tandem.cluster.placement import Infeasible
from tandem.cluster.state import Instance
from tandem.errors import InvalidRequestError, UnknownInstance
from tandem.node.control_routes import service_of, stream_events
from tandem.node.models import describe_card, describe_model, find_models
from tandem.node.service import NodeService
from tandem.protocol import codec
from tandem.protocol.codec import ProtocolError
from tandem.protocol.control import InstanceLoad, LaunchRequest
from tandem.protocol.runner import GenerateRequest
from tandem.store.catalog import catalog

STATE_POLL_SECONDS = 0.1  # the state is an immutable value replaced on change: cheap to compare
KEEP_ALIVE_SECONDS = 15.0
RECONNECT_MILLISECONDS = 2000  # how soon a browser's EventSource retries after losing us

router = APIRouter(tags=["Cluster"])


class LaunchBody(BaseModel):
    """Start a model instance across the cluster."""

    model: str = Field(
        description="a catalog id, a Hugging Face repo id (ORG/NAME[@REVISION]), a checkpoint directory, or 'demo'"
    )
    context: int | None = Field(None, description="tokens per sequence (default: the model's, at most 4096)")
    sequences: int | None = Field(
        None,
        description="KV-cache memory, in sequences of the full context (default 8); shorter ones "
        "share it in blocks, so more of them run at once",
    )
    devices: list[str] | None = Field(
        None,
        description="force these devices in pipeline order: NODE/cpu, ... (NODE: a node id, host name or id prefix)",
    )
    min_stages: int | None = Field(None, description="split over at least this many devices")
    quantize: Literal["int8", "int4"] | None = Field(
        None,
        description="quantize a 16/32-bit checkpoint's weights as it loads: int8, or int4 in groups "
        "of 128 (a checkpoint stored quantized keeps its own format)",
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None,
        description="the runners' dtype on every device (default: bfloat16 on CUDA; on CPUs the "
        "checkpoint's 16-bit dtype, float32 for 32-bit checkpoints). float32 on CPUs gives output "
        "that does not depend on how many requests share a step",
    )
    wait: bool = Field(False, description="answer once the instance is ready or has failed")
    reuse: bool = Field(
        False,
        description="answer with an instance of this model that is ready or launching, if there is one, "
        "instead of launching another (decided by the coordinator, so concurrent asks from "
        "several nodes get one instance)",
    )

    def message(self) -> LaunchRequest:
        return decoded(LaunchRequest, self.model_dump(exclude_none=True))


class GenerateBody(BaseModel):
    """One request to a running instance; events stream back as JSON lines."""

    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    prompt_ids: list[int] | None = None
    params: dict[str, Any] = Field(default_factory=dict, description="sampling settings")

    def message(self) -> GenerateRequest:
        return decoded(GenerateRequest, self.model_dump(exclude_none=True))


def decoded(kind: type, data: dict[str, Any]) -> Any:
    """A public request body as its protocol message; a bad field is a 400 naming it."""
    try:
        return codec.from_json(kind, data, path="body")
    except ProtocolError as error:
        raise InvalidRequestError(str(error)) from None


def cluster_view(service: NodeService) -> dict[str, Any]:
    """What `GET /v1/cluster` and each `state` event carry."""
    return {"self": service.node_id, **codec.to_json(service.state), "refused_by": refusals(service)}


def refusals(service: NodeService) -> list[dict[str, str]]:
    """Peers that refused this node's signature (another cluster secret, most likely): this
    node's own finding, not part of the cluster state, so its dashboard can say so."""
    return [
        {"address": address, "message": message}
        for address, message in sorted(service.node.refused_by.items())
    ]


@router.get(
    "/v1/cluster",
    summary="The cluster state: nodes, devices, links, coordinator, instances",
    response_model=ClusterView,
)
async def cluster(request: Request) -> dict[str, Any]:
    return cluster_view(service_of(request))


@router.post("/v1/instances", summary="Launch a model instance across the cluster", response_model=Instance)
async def launch(body: LaunchBody, request: Request) -> dict[str, Any]:
    return codec.to_json(await service_of(request).launch(body.message()))


@router.post(
    "/v1/placements",
    summary="Preview where a model would go, without launching it",
    response_model=PlacementPreview,
)
async def preview(body: LaunchBody, request: Request) -> dict[str, Any]:
    placement = await asyncio.to_thread(service_of(request).plan, body.message())
    if isinstance(placement, Infeasible):
        return {"feasible": False, "reason": placement.reason}
    return {"feasible": True, "placement": codec.to_json(placement), "explain": placement.explain()}


@router.get("/v1/instances", summary="Model instances and their status", response_model=list[Instance])
async def instances(request: Request) -> list[dict[str, Any]]:
    service = service_of(request)
    await service.refresh_state()  # a follower's copy may be a heartbeat behind the coordinator's
    return [codec.to_json(instance) for instance in service.state.instances]


@router.get("/v1/instances/{instance_id}", summary="One model instance", response_model=Instance)
async def instance(instance_id: str, request: Request) -> dict[str, Any]:
    found = service_of(request).state.instance(instance_id)
    if found is None:
        raise UnknownInstance(f"no instance {instance_id}")
    return codec.to_json(found)


@router.get(
    "/v1/instances/{instance_id}/load",
    summary="The instance's requests now: held by its runner, waiting, and the queue limit",
    response_model=InstanceLoad,
)
async def load(instance_id: str, request: Request) -> dict[str, Any]:
    return codec.to_json(await service_of(request).instances.load(instance_id))


@router.delete("/v1/instances/{instance_id}", summary="Stop a model instance", response_model=StoppedInstance)
async def stop(instance_id: str, request: Request) -> dict[str, Any]:
    await service_of(request).instances.stop(instance_id)
    return {"stopped": instance_id}


@router.post(
    "/v1/instances/{instance_id}/generate",
    summary="Generate; events stream as JSON lines",
    responses=stream_response(GenerateEvent, "application/x-ndjson", "one event per line"),
)
async def generate(instance_id: str, body: GenerateBody, request: Request) -> Response:
    service = service_of(request)
    message = body.message()
    await service.instances.ready_instance(instance_id)  # 404/400 before the stream starts
    return stream_events(service.generate(instance_id, message))


async def state_events(service: NodeService) -> AsyncIterator[bytes]:
    """SSE messages: the state now, then each new state, until the node shuts down."""
    yield f"retry: {RECONNECT_MILLISECONDS}\n\n".encode()
    sent, sent_refusals = None, None
    last_write = time.monotonic()
    closing = service.node.closing
    while not closing.is_set():
        state, refused = service.state, dict(service.node.refused_by)
        if state is not sent or refused != sent_refusals:
            sent, sent_refusals = state, refused
            data = json.dumps(cluster_view(service), separators=(",", ":"))
            yield f"event: state\nid: {state.version}\ndata: {data}\n\n".encode()
            last_write = time.monotonic()
        elif time.monotonic() - last_write > KEEP_ALIVE_SECONDS:
            yield b": keep-alive\n\n"
            last_write = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(closing.wait(), STATE_POLL_SECONDS)


@router.get(
    "/v1/events",
    summary="Server-sent events: the cluster state now and whenever it changes",
    response_class=StreamingResponse,
)
async def events(request: Request) -> StreamingResponse:
    return StreamingResponse(
        state_events(service_of(request)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/v1/cluster/models", summary="Models this node can launch, and whether each fits now")
async def models(request: Request) -> dict[str, Any]:
    service = service_of(request)
    found = find_models(service.node.options.models_dirs)

    # planning may read a config from disk or the Hub: keep it off the event loop
    def describe_all():
        local = [describe_model(m, service.instances.plan) for m in found]
        return local + [describe_card(card, service.instances.plan_shape) for card in catalog()]

    listings = await asyncio.to_thread(describe_all)
    return {"models": [codec.to_json(listing) for listing in listings]}
