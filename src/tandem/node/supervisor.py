"""Runner processes on this machine: start them, read their events, route tokens, stop them.

A runner that crashes (CUDA error, out of memory, killed) is reported failed; the node lives on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable

from tandem import settings
from tandem.cluster.auth import rendezvous_token
from tandem.cluster.state import RunnerReported
from tandem.protocol import codec
from tandem.protocol.codec import ProtocolError
from tandem.protocol.runner import (
    Abort,
    Alive,
    CacheReport,
    Failed,
    Generate,
    GenerateRequest,
    Listening,
    Load,
    Ready,
    RequestError,
    RequestEvent,
    RunnerCommand,
    RunnerEvent,
    RunnerSpec,
    Shutdown,
    StageReport,
    ends_request,
)
from tandem.settings import RENDEZVOUS_TOKEN_VARIABLE

log = logging.getLogger("tandem.supervisor")

STOP_GRACE_SECONDS = 5.0
WATCH_SECONDS = 1.0  # how often a runner's silence is checked
LINE_LIMIT = 16 * 2**20

ReportCallback = Callable[[RunnerReported], Awaitable[None]]


class RunnerExited(Exception):
    """The runner process ended while a request or a start-up step waited on it."""


class RunnerProcess:
    def __init__(self, spec: RunnerSpec, process: asyncio.subprocess.Process, report: ReportCallback) -> None:
        self.spec = spec
        self.process = process
        self.report = report
        loop = asyncio.get_running_loop()
        self.listening: asyncio.Future[int] = loop.create_future()
        self.ready: asyncio.Future[Ready] = loop.create_future()
        self.requests: dict[str, asyncio.Queue[RequestEvent]] = {}
        self.load = Load(0, 0)  # rank 0's latest count of its requests
        self.cache: CacheReport | None = None  # rank 0's latest KV-cache counters
        self.stopping = False
        self.heard_at = time.monotonic()  # the last line it wrote (its pulse comes every ALIVE_SECONDS)
        self.silenced: str | None = None  # why the watchdog killed it
        self.reader = asyncio.create_task(self._read_events())
        self.watchdog = asyncio.create_task(self._watch(settings.runner_silence_seconds()))

    async def _watch(self, silence: float) -> None:
        """Kill the runner when it has been silent for `silence` seconds: its pulse thread stopped,
        so the process is stopped (SIGSTOP, a frozen machine) or hung past Python."""
        while self.process.returncode is None:
            await asyncio.sleep(WATCH_SECONDS)
            quiet = time.monotonic() - self.heard_at
            if quiet > silence and self.process.returncode is None:
                self.silenced = f"runner sent nothing for {quiet:.0f} s (stopped or hung): killed"
                log.warning("runner %s/%d: %s", self.spec.instance_id, self.spec.rank, self.silenced)
                self.process.kill()
                return

    async def _read_events(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.heard_at = time.monotonic()
            try:
                event = codec.decode(RunnerEvent, line)
            except ProtocolError as error:
                log.warning(
                    "runner %s/%d wrote a line that is not an event (%s): %r",
                    self.spec.instance_id,
                    self.spec.rank,
                    error,
                    line[:200],
                )
                continue
            await self._dispatch(event)
        code = await self.process.wait()
        message = self.silenced or f"runner exited with code {code}"
        for future in (self.listening, self.ready):
            if not future.done():
                future.set_exception(RunnerExited(message))
                future.exception()  # a waiter still gets it; nobody waiting (rank 0 alone never listens) is no error
        for request_id, queue in self.requests.items():
            queue.put_nowait(RequestError(message, request_id))
        self.requests.clear()
        if not self.stopping:
            await self._report("failed", None, message)

    async def _report(self, status, stage: StageReport | None, message: str | None) -> None:
        await self.report(
            RunnerReported(
                self.spec.instance_id,
                self.spec.rank,
                status,
                stage.parameter_bytes if stage else None,
                message,
                stage.kv_cache_bytes if stage else None,
                stage.engine if stage else None,
            )
        )

    async def _dispatch(self, event: RunnerEvent) -> None:
        if isinstance(event, Listening):
            if not self.listening.done():
                self.listening.set_result(event.port)
        elif isinstance(event, Ready):
            if not self.ready.done():
                self.ready.set_result(event)
            await self._report("ready", event.report, None)
        elif isinstance(event, Alive):
            pass  # its arrival is what counts (`heard_at`)
        elif isinstance(event, Load):
            self.load = event
        elif isinstance(event, Failed):
            self.stopping = True  # the exit that follows is this failure, reported here once
            await self._report("failed", None, event.message)
        elif isinstance(event, CacheReport):
            self.cache = event
        elif event.request_id is not None:
            queue = self.requests.get(event.request_id)
            if queue is not None:
                queue.put_nowait(event)
                if ends_request(event):
                    self.requests.pop(event.request_id, None)

    async def send(self, command: RunnerCommand) -> None:
        if self.process.returncode is not None or self.process.stdin is None:
            raise RunnerExited(f"runner exited with code {self.process.returncode}")
        self.process.stdin.write(codec.encode(command) + b"\n")
        await self.process.stdin.drain()

    async def submit(self, request_id: str, request: GenerateRequest) -> asyncio.Queue[RequestEvent]:
        """Send a generate command; its events arrive on the returned queue."""
        queue: asyncio.Queue[RequestEvent] = asyncio.Queue()
        self.requests[request_id] = queue
        await self.send(Generate(request_id, request))
        return queue

    async def abort(self, request_id: str) -> None:
        if self.requests.pop(request_id, None) is not None:
            with contextlib.suppress(RunnerExited, ConnectionError):
                await self.send(Abort(request_id))

    async def stop(self) -> None:
        self.stopping = True
        if self.process.returncode is None:
            with contextlib.suppress(RunnerExited, ConnectionError):
                await self.send(Shutdown())
            try:
                await asyncio.wait_for(self.process.wait(), STOP_GRACE_SECONDS)
            except TimeoutError:
                self.process.kill()  # a rank blocked in a collective never reads its stdin
                await self.process.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


class Supervisor:
    def __init__(self, report: ReportCallback, secret: bytes) -> None:
        self.report = report
        self.secret = secret  # each runner gets its instance's rendezvous token, derived from it
        self.runners: dict[tuple[str, int], RunnerProcess] = {}

    async def start(self, spec: RunnerSpec) -> RunnerProcess:
        key = (spec.instance_id, spec.rank)
        if key in self.runners:
            return self.runners[key]
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tandem.runner",
            spec.to_json(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT,
            env={**os.environ, RENDEZVOUS_TOKEN_VARIABLE: rendezvous_token(self.secret, spec.instance_id)},
        )
        runner = RunnerProcess(spec, process, self.report)
        self.runners[key] = runner
        log.info(
            "started runner %s rank %d of %d on %s (layers [%d, %d))",
            spec.instance_id,
            spec.rank,
            spec.world_size,
            spec.device,
            spec.layer_start,
            spec.layer_end,
        )
        return runner

    def reports(self) -> tuple[RunnerReported, ...]:
        """Every local runner's status (heartbeats carry them, so a new coordinator learns what
        the old one was told)."""
        reports = []
        for (instance_id, rank), runner in self.runners.items():
            ready = runner.ready.done() and runner.ready.exception() is None
            exited = runner.process.returncode is not None and not runner.stopping
            status = "ready" if ready and not exited else ("failed" if exited else "starting")
            stage = runner.ready.result().report if ready else None
            reports.append(
                RunnerReported(
                    instance_id,
                    rank,
                    status,
                    stage.parameter_bytes if stage else None,
                    f"runner exited with code {runner.process.returncode}" if exited else None,
                    stage.kv_cache_bytes if stage else None,
                    stage.engine if stage else None,
                )
            )
        return tuple(reports)

    def driver(self, instance_id: str) -> RunnerProcess | None:
        return self.runners.get((instance_id, 0))

    def instance_ids(self) -> set[str]:
        return {instance_id for instance_id, _ in self.runners}

    async def stop_instance(self, instance_id: str) -> None:
        doomed = [key for key in self.runners if key[0] == instance_id]
        await asyncio.gather(*(self.runners.pop(key).stop() for key in doomed))

    async def stop_all(self) -> None:
        for instance_id in self.instance_ids():
            await self.stop_instance(instance_id)
