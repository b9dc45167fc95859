"""The signed node-to-node routes (`/internal/*`): each verifies the cluster secret's signature,
decodes its body into its typed message (`tandem.protocol.control`), does its work through the
node service and signs its typed reply. A message meant for another node, or one whose nonce was
seen within the replay window, is refused (401) like a forged one, with the reason logged. Only
heartbeats and reads may name no target (`ANY_NODE`): they go to addresses before their node is
known. A malformed or unknown message gets a 400 `Refusal` naming the bad field; nothing a peer
sends can crash the node.

Model file routes (`/internal/files/*`): peers fetch what this node holds of a repo. File bodies
are not signed: the receiver checks every file against its hash, which is stronger.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from tandem.cluster.auth import NODE_HEADER, NONCE_HEADER, AuthError, check_target, verify_request
from tandem.cluster.state import RunnerReported
from tandem.errors import TandemError, UnknownInstance
from tandem.node.control import sign_reply
from tandem.node.service import NodeService
from tandem.protocol import codec
from tandem.protocol.codec import ProtocolError
from tandem.protocol.control import (
    Blob,
    Heartbeat,
    LaunchRequest,
    PrepareStage,
    Refusal,
    StartRunner,
    StopRunners,
)
from tandem.protocol.runner import GenerateRequest, RequestError, RequestEvent

log = logging.getLogger("tandem.server")
MAX_BLOB_BYTES = 64 * 2**20

M = TypeVar("M")
router = APIRouter(include_in_schema=False)


def service_of(request: Request) -> NodeService:
    return request.app.state.service


def _target(request: Request) -> str:
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


async def verified_body(request: Request, any_target: bool = False) -> bytes:
    """The request's body, once its signature, its target and its nonce check out (else the
    AuthError becomes a 401). `any_target`: the message may name no node (heartbeats, reads)."""
    body = await request.body()
    node = service_of(request).node
    try:
        signed = verify_request(node.secret, request.method, _target(request), body, request.headers)
        check_target(signed, node.node_id, any_target)
        node.replay_window.admit(signed, time.time())
    except AuthError as error:
        client = request.client.host if request.client else "?"
        if node.refusal_log.due(f"{client} {type(error).__name__} {str(error)[:40]}", time.monotonic()):
            log.warning("refused %s %s from %s: %s", request.method, request.url.path, client, error)
        raise
    return body


def signed(request: Request, message: Any, status: int = 200) -> Response:
    """`message` as a reply signed for the requester and its request's nonce."""
    body = codec.encode(message)
    node = service_of(request).node
    headers = sign_reply(
        node.secret,
        node.node_id,
        _target(request),
        body,
        requester=request.headers[NODE_HEADER],
        nonce=request.headers[NONCE_HEADER],
    )
    return Response(body, status_code=status, media_type="application/json", headers=headers)


async def answer(
    request: Request,
    kind: type[M] | None,
    work: Callable[[NodeService, M], Awaitable[Any] | Any],
    any_target: bool = False,
) -> Response:
    """Verify, decode the body as `kind` (None: no body), run `work`, sign its reply."""
    body = await verified_body(request, any_target)
    try:
        message = codec.decode(kind, body) if kind is not None else None
        reply = work(service_of(request), message)  # type: ignore[arg-type]
        if inspect.isawaitable(reply):
            reply = await reply
        return signed(request, reply)
    except UnknownInstance as error:
        return signed(request, Refusal(str(error)), 404)
    except (ProtocolError, TandemError) as error:
        return signed(request, Refusal(str(error)), 400)


@router.post("/internal/heartbeat")
async def heartbeat(request: Request) -> Response:
    return await answer(
        request, Heartbeat, lambda service, message: service.node.handle_heartbeat(message), any_target=True
    )


@router.get("/internal/state")
async def internal_state(request: Request) -> Response:
    return await answer(request, None, lambda service, _: service.node.state, any_target=True)


@router.get("/internal/blob")
async def blob(request: Request, bytes: int = 0) -> Response:
    return await answer(
        request, None, lambda _, __: Blob("x" * max(0, min(bytes, MAX_BLOB_BYTES))), any_target=True
    )


@router.post("/internal/runner-report")
async def runner_report(request: Request) -> Response:
    return await answer(
        request, RunnerReported, lambda service, report: service.node.submit_runner_report(report)
    )


@router.post("/internal/runners")
async def start_runner(request: Request) -> Response:
    return await answer(
        request, StartRunner, lambda service, start: service.instances.start_local_runner(start)
    )


@router.post("/internal/runners/stop")
async def stop_runners(request: Request) -> Response:
    return await answer(
        request, StopRunners, lambda service, stop: service.instances.stop_local_runners(stop)
    )


@router.post("/internal/instances")
async def internal_launch(request: Request) -> Response:
    return await answer(
        request, LaunchRequest, lambda service, launch: service.instances.launch_checked(launch)
    )


@router.delete("/internal/instances/{instance_id}")
async def internal_stop(request: Request, instance_id: str) -> Response:
    return await answer(request, None, lambda service, _: service.instances.stop(instance_id))


@router.get("/internal/instances/{instance_id}/load")
async def internal_load(request: Request, instance_id: str) -> Response:
    return await answer(request, None, lambda service, _: service.instances.load(instance_id))


@router.post("/internal/instances/{instance_id}/generate")
async def internal_generate(request: Request, instance_id: str) -> Response:
    body = await verified_body(request)
    try:
        generate = codec.decode(GenerateRequest, body)
    except ProtocolError as error:
        return signed(request, Refusal(str(error)), 400)
    return stream_events(service_of(request).instances.generate(instance_id, generate))


def stream_events(events: AsyncIterator[RequestEvent]) -> StreamingResponse:
    """JSON lines; when the client goes away, the generator is closed, which aborts the request."""

    async def lines() -> AsyncIterator[bytes]:
        try:
            async for event in events:
                yield codec.encode(event) + b"\n"
        except TandemError as error:
            yield codec.encode(RequestError(str(error))) + b"\n"
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    return StreamingResponse(lines(), media_type="application/x-ndjson")


# --- model files ------------------------------------------------------------------------------------


@router.get("/internal/files/manifest")
async def manifest(request: Request, repo: str, revision: str) -> Response:
    await verified_body(request, any_target=True)
    held = service_of(request).files.held_manifest(repo, revision)
    if held is None:
        return signed(request, Refusal(f"this node holds no files of {repo} at {revision}"), 404)
    return signed(request, held)


@router.get("/internal/files/blob")
async def file_blob(request: Request, repo: str, commit: str, file: str) -> Response:
    await verified_body(request, any_target=True)
    path = service_of(request).files.held_file(repo, commit, file)
    if path is None:
        return JSONResponse({"error": f"this node does not hold {file} of {repo}"}, status_code=404)
    return FileResponse(path, media_type="application/octet-stream")


@router.post("/internal/files/prepare")
async def prepare(request: Request) -> Response:
    return await answer(request, PrepareStage, lambda service, stage: service.files.prepare_request(stage))
