"""Assemble and run a node: the service (identity, secret, devices, managers), its HTTP app
(signed node routes, the public cluster API, the model APIs, the dashboard), loops, discovery."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tandem import __version__
from tandem.api import mount_api
from tandem.api.exposure import Exposure
from tandem.cluster.auth import AuthError
from tandem.dashboard import mount_dashboard
from tandem.errors import PeerUnreachable, TandemError, UnknownInstance
from tandem.node import cluster_routes, control_routes
from tandem.node.options import NodeOptions
from tandem.node.service import NodeService

log = logging.getLogger("tandem.node")


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(service: NodeService) -> FastAPI:
    app = FastAPI(
        title="Tandem",
        version=__version__,
        description="A cluster of the machines you already have, serving one model API.",
    )
    app.state.service = service

    @app.exception_handler(AuthError)
    async def _refused(_: Request, error: AuthError) -> JSONResponse:
        return error_response(401, str(error))  # logged by the signed route that refused it

    @app.exception_handler(UnknownInstance)
    async def _unknown(_: Request, error: UnknownInstance) -> JSONResponse:
        return error_response(404, str(error))

    @app.exception_handler(PeerUnreachable)
    async def _unreachable(_: Request, error: PeerUnreachable) -> JSONResponse:
        return error_response(503, str(error))

    @app.exception_handler(TandemError)
    async def _bad_request(_: Request, error: TandemError) -> JSONResponse:
        return error_response(400, str(error))

    app.include_router(control_routes.router)
    app.include_router(cluster_routes.router)
    mount_dashboard(app)
    options = service.node.options
    mount_api(app, service, api_key=options.api_key, open_api=options.open_api)
    return app


async def serve(service: NodeService) -> None:
    options = service.node.options
    config = uvicorn.Config(
        create_app(service),
        host=options.host,
        port=options.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    serving = asyncio.create_task(server.serve())
    service.start_background()
    discovery = await start_discovery(service)
    log.info("serving on http://%s:%d", options.host, options.port)
    log.info("%s", Exposure(options.api_key is not None, options.open_api).summary())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
    log.info("shutting down")
    if discovery is not None:
        await discovery.stop()
    await service.node.close()
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await serving


async def start_discovery(service: NodeService):
    """mDNS discovery feeding membership candidates; None when disabled."""
    from tandem.node.discovery_bridge import start_discovery_for

    return await start_discovery_for(service.node)


def run_node(options: NodeOptions) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per control request is noise
    asyncio.run(serve(NodeService.build(options)))
