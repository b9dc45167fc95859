"""Ollama-compatible model management: POST /api/pull fetches a model to this node, streaming
its progress as JSON lines; DELETE /api/delete removes a downloaded model from this node.

Pull lines, as Ollama's clients read them: `{"status": "pulling manifest"}`, then
`{"status": "pulling COMMIT", "digest", "total", "completed"}` while the files arrive (`total` is
the whole download's from its first line), then `verifying sha256 digest` (every file was checked
against its hash as it arrived), `writing manifest` and `success`; a failure is an `{"error"}`
line. A model whose files are all here answers `pulling manifest` and `success` at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import Field

from tandem.api.errors import APIError
from tandem.api.ollama_schemas import Lenient
from tandem.api.openapi import stream_response
from tandem.api.serving import serving_of, without_default_tag
from tandem.api.streaming import json_line
from tandem.cluster.topology import DownloadProgress
from tandem.errors import TandemError
from tandem.store.cache import remove_repo
from tandem.store.names import UnknownModelName, parse_model_name
from tandem.store.resolve import local_status

router = APIRouter(tags=["Ollama"])

NDJSON = "application/x-ndjson"


class OllamaPullRequest(Lenient):
    model: str | None = Field(
        None, description="a catalog id or Hugging Face repo id (older clients send `name`)"
    )
    name: str | None = None
    insecure: bool | None = Field(None, description="accepted and ignored")
    stream: bool | None = Field(True, description="JSON lines unless false")


class OllamaPullStatus(Lenient):
    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


class OllamaDeleteRequest(Lenient):
    model: str | None = Field(None, description="the model (older clients send `name`)")
    name: str | None = None


def named_model(model: str | None, name: str | None) -> str:
    text = without_default_tag((model or name or "").strip())
    if not text:
        raise APIError(400, "model: name a model, a catalog id or a Hugging Face repo id")
    return text


def progress_line(download: DownloadProgress) -> dict[str, Any]:
    commit = download.commit or ""
    return {
        "status": f"pulling {commit[:12]}",
        "digest": f"sha1:{commit}",
        "total": download.total_bytes or 0,
        "completed": download.done_bytes,
    }


async def pull_lines(progress: AsyncIterator[DownloadProgress]) -> AsyncIterator[dict[str, Any]]:
    """The status lines of one pull; raises TandemError when it fails."""
    yield {"status": "pulling manifest"}
    last = None
    async for download in progress:
        line = progress_line(download)
        if line != last:
            yield line
        last = line
    yield {"status": "verifying sha256 digest"}
    yield {"status": "writing manifest"}
    yield {"status": "success"}


async def streamed(lines: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    try:
        async for line in lines:
            yield json_line(line)
    except TandemError as error:
        yield json_line({"error": str(error)})


@router.post(
    "/api/pull",
    summary="Download a model to this node (Ollama-compatible); JSON lines of progress unless stream is false",
    response_model=OllamaPullStatus,
    responses=stream_response(
        OllamaPullStatus, NDJSON, "success, or JSON lines of progress unless stream is false"
    ),
)
async def pull(body: OllamaPullRequest, request: Request) -> Any:
    text = named_model(body.model, body.name)
    try:
        parse_model_name(text)
    except UnknownModelName as error:
        raise APIError(400, str(error)) from None
    lines = pull_lines(serving_of(request).cluster.pull(text))
    if body.stream is not False:
        return StreamingResponse(streamed(lines), media_type=NDJSON)
    last: dict[str, Any] = {}
    async for line in lines:
        last = line
    return last


@router.delete(
    "/api/delete",
    summary="Delete a downloaded model from this node (Ollama-compatible)",
    response_model=OllamaPullStatus,
)
async def delete(body: OllamaDeleteRequest, request: Request) -> Any:
    text = named_model(body.model, body.name)
    try:
        parsed = parse_model_name(text)
    except UnknownModelName as error:
        raise APIError(404, str(error)) from None
    if parsed.kind != "repo" or parsed.repo_id is None:
        raise APIError(400, f"{text} is not a downloaded model: only models fetched from the Hub are deleted")
    serving = serving_of(request)
    if local_status(parsed.repo_id, parsed.revision) == "absent":
        raise APIError(404, f"model {text!r} is not downloaded to this node")
    for instance in serving.instances():
        uses_here = any(r.node_id == serving.cluster.node_id for r in instance.runners)
        if instance.status != "failed" and uses_here and repo_of(instance.model) == parsed.repo_id:
            raise APIError(
                400,
                f"instance {instance.instance_id} runs {text} on this node: stop it first "
                f"(DELETE /v1/instances/{instance.instance_id})",
            )
    await asyncio.to_thread(remove_repo, parsed.repo_id)
    return {"status": "success"}


def repo_of(model: str) -> str | None:
    """The Hub repo an instance's model name stands for (None for the demo or a directory)."""
    try:
        return parse_model_name(model).repo_id
    except UnknownModelName:
        return None
