"""The node's HTTP routes for the cluster. `/internal/*` routes accept only requests signed with
the cluster secret and sign their replies; `/v1/*` routes are the public cluster API.

The OpenAI/Anthropic/Ollama APIs and the dashboard mount onto the same app (`tandem.api`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from tandem import __version__
from tandem.api import mount_api
from tandem.api.cluster_schemas import ClusterView, GenerateEvent, PlacementPreview, StoppedInstance
from tandem.api.openapi import stream_response
from tandem.cluster.auth import AuthError, verify_request
from tandem.cluster.placement import Infeasible
from tandem.cluster.state import Instance
from tandem.dashboard import mount_dashboard
from tandem.errors import TandemError
from tandem.node.cluster_views import cluster_views_router
from tandem.node.codec import state_to_json, to_jsonable
from tandem.node.control import PeerUnreachable, sign_reply
from tandem.node.file_routes import add_file_routes
from tandem.node.instances import UnknownInstance

log = logging.getLogger("tandem.server")
MAX_BLOB_BYTES = 64 * 2**20


class LaunchRequest(BaseModel):
    """Start a model instance across the cluster."""

    model: str = Field(
        description="a catalog id, a Hugging Face repo id (ORG/NAME[@REVISION]), a checkpoint directory, or 'demo'"
    )
    context: int | None = Field(None, description="tokens per sequence (default: the model's, at most 4096)")
    sequences: int | None = Field(None, description="sequences served at once (KV-cache slots), default 8")
    devices: list[str] | None = Field(
        None, description="force these devices in pipeline order: NODE_ID/cpu, ..."
    )
    min_stages: int | None = Field(None, description="split over at least this many devices")
    quantize: Literal["int8", "int4"] | None = Field(
        None,
        description="quantize a 16/32-bit checkpoint's weights as it loads: int8, or int4 in groups "
        "of 128 (a checkpoint stored quantized keeps its own format)",
    )
    wait: bool = Field(False, description="answer once the instance is ready or has failed")
    reuse: bool = Field(
        False,
        description="answer with an instance of this model that is ready or launching, if there is one, "
        "instead of launching another (decided by the coordinator, so concurrent asks from "
        "several nodes get one instance)",
    )


class GenerateRequest(BaseModel):
    """One request to a running instance; events stream back as JSON lines."""

    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    prompt_ids: list[int] | None = None
    params: dict[str, Any] = Field(default_factory=dict, description="sampling settings")


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(node: Any) -> FastAPI:
    app = FastAPI(
        title="Tandem",
        version=__version__,
        description="A cluster of the machines you already have, serving one model API.",
    )
    app.state.node = node

    @app.exception_handler(UnknownInstance)
    async def _unknown(_: Request, error: UnknownInstance) -> JSONResponse:
        return error_response(404, str(error))

    @app.exception_handler(PeerUnreachable)
    async def _unreachable(_: Request, error: PeerUnreachable) -> JSONResponse:
        return error_response(503, str(error))

    @app.exception_handler(TandemError)
    async def _bad_request(_: Request, error: TandemError) -> JSONResponse:
        return error_response(400, str(error))

    # --- signed node-to-node routes -----------------------------------------------------------

    async def verified_json(request: Request) -> Any:
        body = await request.body()
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        try:
            verify_request(node.secret, request.method, target, body, request.headers)
        except AuthError as error:
            log.warning(
                "refused %s %s from %s: %s",
                request.method,
                request.url.path,
                request.client.host if request.client else "?",
                error,
            )
            raise HTTPException(status_code=401, detail=str(error)) from None
        return json.loads(body) if body else None

    def signed(request: Request, payload: Any, status: int = 200) -> Response:
        body = json.dumps(payload).encode()
        headers = sign_reply(
            node.secret,
            node.node_id,
            request.url.path + (f"?{request.url.query}" if request.url.query else ""),
            body,
        )
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    async def signed_call(request: Request, work) -> Response:
        payload = await verified_json(request)
        try:
            return signed(request, await work(payload))
        except UnknownInstance as error:
            return signed(request, {"error": str(error)}, 404)
        except TandemError as error:
            return signed(request, {"error": str(error)}, 400)

    add_file_routes(app, node, verified_json, signed, signed_call)

    @app.post("/internal/heartbeat", include_in_schema=False)
    async def heartbeat(request: Request) -> Response:
        return await signed_call(request, lambda message: _sync(node.handle_heartbeat(message)))

    @app.get("/internal/state", include_in_schema=False)
    async def internal_state(request: Request) -> Response:
        await verified_json(request)
        return signed(request, state_to_json(node.state))

    @app.get("/internal/blob", include_in_schema=False)
    async def blob(request: Request, bytes: int = 0) -> Response:
        await verified_json(request)
        return signed(request, {"pad": "x" * max(0, min(bytes, MAX_BLOB_BYTES))})

    @app.post("/internal/runner-report", include_in_schema=False)
    async def runner_report(request: Request) -> Response:
        return await signed_call(request, node.submit_runner_report)

    @app.post("/internal/runners", include_in_schema=False)
    async def start_runner(request: Request) -> Response:
        return await signed_call(request, lambda body: node.instances.start_local_runner(body["spec"]))

    @app.post("/internal/runners/stop", include_in_schema=False)
    async def stop_runners(request: Request) -> Response:
        return await signed_call(request, lambda body: node.supervisor.stop_instance(body["instance_id"]))

    @app.post("/internal/instances", include_in_schema=False)
    async def internal_launch(request: Request) -> Response:
        return await signed_call(request, node.instances.launch)

    @app.delete("/internal/instances/{instance_id}", include_in_schema=False)
    async def internal_stop(request: Request, instance_id: str) -> Response:
        return await signed_call(request, lambda _: node.instances.stop(instance_id))

    @app.post("/internal/instances/{instance_id}/generate", include_in_schema=False)
    async def internal_generate(request: Request, instance_id: str) -> Response:
        command = await verified_json(request)
        return await stream_events(node.instances.generate(instance_id, command))

    # --- public cluster API -------------------------------------------------------------------

    @app.get(
        "/v1/cluster",
        summary="The cluster state: nodes, devices, links, coordinator, instances",
        response_model=ClusterView,
    )
    async def cluster() -> dict[str, Any]:
        return {"self": node.node_id, **state_to_json(node.state)}

    @app.post("/v1/instances", summary="Launch a model instance across the cluster", response_model=Instance)
    async def launch(body: LaunchRequest) -> dict[str, Any]:
        return await node.instances.launch(body.model_dump(exclude_none=True))

    @app.post(
        "/v1/placements",
        summary="Preview where a model would go, without launching it",
        response_model=PlacementPreview,
    )
    async def preview(body: LaunchRequest) -> dict[str, Any]:
        placement = await asyncio.to_thread(node.instances.plan, body.model_dump(exclude_none=True))
        if isinstance(placement, Infeasible):
            return {"feasible": False, "reason": placement.reason}
        return {"feasible": True, "placement": to_jsonable(placement), "explain": placement.explain()}

    @app.get("/v1/instances", summary="Model instances and their status", response_model=list[Instance])
    async def instances() -> list[dict[str, Any]]:
        await node.refresh_state()  # a follower's copy may be a heartbeat behind the coordinator's
        return [to_jsonable(instance) for instance in node.state.instances]

    @app.get("/v1/instances/{instance_id}", summary="One model instance", response_model=Instance)
    async def instance(instance_id: str) -> dict[str, Any]:
        found = node.state.instance(instance_id)
        if found is None:
            raise UnknownInstance(f"no instance {instance_id}")
        return to_jsonable(found)

    @app.delete(
        "/v1/instances/{instance_id}", summary="Stop a model instance", response_model=StoppedInstance
    )
    async def stop(instance_id: str) -> dict[str, Any]:
        await node.instances.stop(instance_id)
        return {"stopped": instance_id}

    @app.post(
        "/v1/instances/{instance_id}/generate",
        summary="Generate; events stream as JSON lines",
        responses=stream_response(GenerateEvent, "application/x-ndjson", "one event per line"),
    )
    async def generate(instance_id: str, body: GenerateRequest) -> Response:
        await node.instances.ready_instance(instance_id)  # 404/400 before the stream starts
        return await stream_events(node.instances.generate(instance_id, body.model_dump(exclude_none=True)))

    app.include_router(cluster_views_router(node))
    mount_dashboard(app)
    mount_api(app, node)
    return app


async def _sync(value: Any) -> Any:
    return value


async def stream_events(events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    """JSON lines; when the client goes away, the generator is closed, which aborts the request."""

    async def lines() -> AsyncIterator[bytes]:
        try:
            async for event in events:
                yield (json.dumps(event) + "\n").encode()
        except TandemError as error:
            yield (json.dumps({"event": "error", "message": str(error)}) + "\n").encode()
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    return StreamingResponse(lines(), media_type="application/x-ndjson")
