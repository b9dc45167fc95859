"""The signed routes through which nodes share model files (`tandem.node.model_files`).

    GET  /internal/files/manifest?repo=R&revision=V       what this node holds of R at V (signed JSON)
    GET  /internal/files/blob?repo=R&commit=C&file=F      the file's bytes; Range requests get 206
    POST /internal/files/prepare                          fetch one stage's files (the coordinator asks)

Requests must carry the cluster secret's signature. File bodies are not signed: the receiver
checks every file against its hash, which is stronger than a signature over the transfer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, JSONResponse


def add_file_routes(
    app: FastAPI,
    node: Any,
    verified_json: Callable[[Request], Awaitable[Any]],
    signed: Callable[..., Response],
    signed_call: Callable[[Request, Any], Awaitable[Response]],
) -> None:
    @app.get("/internal/files/manifest", include_in_schema=False)
    async def manifest(request: Request, repo: str, revision: str) -> Response:
        await verified_json(request)
        held = node.model_files.held_manifest(repo, revision)
        if held is None:
            return signed(request, {"error": f"this node holds no files of {repo} at {revision}"}, 404)
        return signed(request, held.to_json())

    @app.get("/internal/files/blob", include_in_schema=False)
    async def blob(request: Request, repo: str, commit: str, file: str) -> Response:
        await verified_json(request)
        path = node.model_files.held_file(repo, commit, file)
        if path is None:
            return JSONResponse({"error": f"this node does not hold {file} of {repo}"}, status_code=404)
        return FileResponse(path, media_type="application/octet-stream")

    @app.post("/internal/files/prepare", include_in_schema=False)
    async def prepare(request: Request) -> Response:
        return await signed_call(request, node.model_files.prepare_request)
