"""The web dashboard: a page of plain ES modules and CSS, served by every node from package data.

Nothing is built at install time and nothing is fetched from elsewhere, so the dashboard works
on a network with no internet. The page talks only to the node that served it, through the
public routes (`/v1/events`, `/v1/cluster/models`, `/v1/placements`, `/v1/instances…`).
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).parent / "static"

# Module scripts must be served as JavaScript; some systems' MIME tables say otherwise.
mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/css", ".css")
mimetypes.add_type("image/svg+xml", ".svg")

# The page renders model output as HTML (escaped first, see js/markdown.js); this policy is the
# second wall: no inline scripts, no other origins.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


class RevalidatedFiles(StaticFiles):
    """Static files that the browser revalidates on each load (cheap: ETag), so a node upgraded
    in place never serves a stale mix of old and new modules."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def mount_dashboard(app: FastAPI) -> None:
    """Serve the page at `/` and its assets under `/dashboard/`."""

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    app.mount("/dashboard", RevalidatedFiles(directory=STATIC_DIR), name="dashboard")
