"""Runner processes on this machine: start them, read their events, route tokens, stop them.

A runner that crashes (CUDA error, out of memory, killed) is reported failed; the node lives on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from tandem.runner.spec import RunnerSpec

log = logging.getLogger("tandem.supervisor")

STOP_GRACE_SECONDS = 5.0
LINE_LIMIT = 16 * 2**20

# (instance_id, rank, status, parameter_bytes, message) -> None
ReportCallback = Callable[[str, int, str, int | None, str | None], Awaitable[None]]


class RunnerExited(Exception):
    """The runner process ended while a request or a start-up step waited on it."""


class RunnerProcess:
    def __init__(self, spec: RunnerSpec, process: asyncio.subprocess.Process, report: ReportCallback) -> None:
        self.spec = spec
        self.process = process
        self.report = report
        loop = asyncio.get_running_loop()
        self.listening: asyncio.Future[int] = loop.create_future()
        self.ready: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.requests: dict[str, asyncio.Queue] = {}
        self.stopping = False
        self.reader = asyncio.create_task(self._read_events())

    async def _read_events(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                log.warning(
                    "runner %s/%d printed a non-event line: %r",
                    self.spec.instance_id,
                    self.spec.rank,
                    line[:200],
                )
                continue
            await self._dispatch(event)
        code = await self.process.wait()
        message = f"runner exited with code {code}"
        for future in (self.listening, self.ready):
            if not future.done():
                future.set_exception(RunnerExited(message))
        for queue in self.requests.values():
            queue.put_nowait({"event": "error", "message": message})
        self.requests.clear()
        if not self.stopping:
            await self.report(self.spec.instance_id, self.spec.rank, "failed", None, message)

    async def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "listening" and not self.listening.done():
            self.listening.set_result(int(event["port"]))
        elif kind == "ready":
            if not self.ready.done():
                self.ready.set_result(event)
            await self.report(
                self.spec.instance_id, self.spec.rank, "ready", event.get("parameter_bytes"), None
            )
        elif kind == "failed":
            self.stopping = True  # the exit that follows is this failure, reported here once
            await self.report(self.spec.instance_id, self.spec.rank, "failed", None, event.get("message"))
        elif "request_id" in event:
            queue = self.requests.get(event["request_id"])
            if queue is not None:
                queue.put_nowait(event)
                if kind in ("rejected", "finished") or "finish_reason" in event:
                    self.requests.pop(event["request_id"], None)

    async def send(self, command: dict[str, Any]) -> None:
        if self.process.returncode is not None or self.process.stdin is None:
            raise RunnerExited(f"runner exited with code {self.process.returncode}")
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()

    async def submit(self, request_id: str, command: dict[str, Any]) -> asyncio.Queue:
        """Send a generate command; its events arrive on the returned queue."""
        queue: asyncio.Queue = asyncio.Queue()
        self.requests[request_id] = queue
        await self.send({**command, "op": "generate", "request_id": request_id})
        return queue

    async def abort(self, request_id: str) -> None:
        if self.requests.pop(request_id, None) is not None:
            with contextlib.suppress(RunnerExited, ConnectionError):
                await self.send({"op": "abort", "request_id": request_id})

    async def stop(self) -> None:
        self.stopping = True
        if self.process.returncode is None:
            with contextlib.suppress(RunnerExited, ConnectionError):
                await self.send({"op": "shutdown"})
            try:
                await asyncio.wait_for(self.process.wait(), STOP_GRACE_SECONDS)
            except TimeoutError:
                self.process.kill()  # a rank blocked in a collective never reads its stdin
                await self.process.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


class Supervisor:
    def __init__(self, report: ReportCallback) -> None:
        self.report = report
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

    def reports(self) -> list[dict[str, Any]]:
        """Every local runner's status, as RunnerReported fields (heartbeats carry them, so a new
        coordinator learns what the old one was told)."""
        reports = []
        for (instance_id, rank), runner in self.runners.items():
            ready = runner.ready.done() and runner.ready.exception() is None
            exited = runner.process.returncode is not None and not runner.stopping
            status = "ready" if ready and not exited else ("failed" if exited else "starting")
            reports.append(
                {
                    "instance_id": instance_id,
                    "rank": rank,
                    "status": status,
                    "parameter_bytes": runner.ready.result().get("parameter_bytes") if ready else None,
                    "message": f"runner exited with code {runner.process.returncode}" if exited else None,
                }
            )
        return reports

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
