"""From a request's `model` to a running instance, and from there to a started generation.

`model` names a running instance by the model it was launched with (a catalog name, a directory)
or by its instance id. When several instances serve the model, the one with the fewest requests
in flight here (per slot) takes it. When none runs and the name is one a request may launch
(`catalog.launchable_by_name`: the demo, a catalog id, a repo id), this node asks the coordinator to launch one and waits for it
(one ask per name at a time at this node; the coordinator answers asks from several nodes with
the one instance it launched first); if the model does not fit, the answer says why.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import replace

from fastapi import Request

from tandem.api.catalog import launchable_by_name, servable_model_names
from tandem.api.cluster import ClusterAccess
from tandem.api.errors import APIError
from tandem.api.generation import Generation, GenerationFailed, Resumed
from tandem.api.in_flight import InFlightCounts
from tandem.api.metrics import ServingMetrics
from tandem.cluster.placement import Infeasible
from tandem.cluster.state import ClusterState, Instance
from tandem.errors import TandemError
from tandem.protocol.control import LaunchRequest
from tandem.protocol.runner import Accepted, GenerateRequest
from tandem.store.fetch import FilesUnavailable
from tandem.store.hub import HubRefused, HubUnreachable

log = logging.getLogger("tandem.api")

OLLAMA_DEFAULT_TAG = ":latest"
# How long a request whose instance broke waits for the coordinator to declare the instance lost
# (a node is declared gone after node.options.PEER_TIMEOUT, 5 s) and for its replacement to be
# ready; a replacement loads its weights, so this is generous.
RESUME_WAIT_SECONDS = 180.0
LOSS_NOTICE_SECONDS = 15.0  # an instance still ready this long after a failure was not lost


class Serving:
    """The API's view of the cluster's instances; one per node."""

    def __init__(self, cluster: ClusterAccess) -> None:
        self.cluster = cluster
        self.in_flight = InFlightCounts()
        self.metrics = ServingMetrics(cluster.node_id, lambda: cluster.state, self.in_flight.in_flight)
        self._launch_locks: dict[str, asyncio.Lock] = {}

    def instances(self) -> tuple[Instance, ...]:
        return self.cluster.state.instances

    def matching(self, name: str) -> list[Instance]:
        return [i for i in self.instances() if name in (i.instance_id, i.model)]

    def known_models(self) -> dict[str, list[str]]:
        """Every model name the API lists: those with instances (and their ids), then those the
        cluster could launch by name."""
        names: dict[str, list[str]] = {}
        for instance in self.instances():
            if instance.status != "failed":
                names.setdefault(instance.model, []).append(instance.instance_id)
        for name in servable_model_names():
            names.setdefault(name, [])
        return names

    def _pick(self, name: str) -> Instance | None:
        """The ready instance with the least load, else one still launching, else None."""
        matches = self.matching(name)
        ready = [i for i in matches if i.status == "ready"]
        if ready:
            return min(ready, key=self.in_flight.load)
        return next((i for i in matches if i.status == "launching"), None)

    async def instance_for(self, name: str) -> Instance:
        """The instance that serves `name`, launched now if need be. Raises APIError."""
        name = name.strip()
        if not name:
            raise APIError(400, "model: name a model (GET /v1/models lists them)", param="model")
        instance = self._pick(name)
        if instance is None and not self.cluster.is_coordinator:
            await self.cluster.refresh_state()  # our copy may be a heartbeat behind
            instance = self._pick(name)
        if instance is not None:
            return await self._settled(instance)
        if not launchable_by_name(name):
            failed = self.matching(name)
            if failed:
                raise APIError(503, f"instance {failed[0].instance_id} of {name} failed: {failed[0].error}")
            lost = not_replaced(self.cluster.state, name)
            if lost is not None:
                raise APIError(503, lost, code="model_does_not_fit")
            raise APIError(
                404,
                f"model {name!r} is not running and is not one this cluster can launch by name; "
                "GET /v1/models lists the models",
                code="model_not_found",
                param="model",
            )
        return await self._launch(name)

    async def _settled(self, instance: Instance) -> Instance:
        if instance.status == "launching":
            try:
                instance = await self.cluster.wait_until_settled(instance.instance_id)
            except TandemError as error:
                raise APIError(503, f"instance {instance.instance_id} did not start: {error}") from None
        if instance.status != "ready":
            raise APIError(
                503, f"instance {instance.instance_id} of {instance.model} failed to start: {instance.error}"
            )
        return instance

    async def _launch(self, name: str) -> Instance:
        lock = self._launch_locks.setdefault(name, asyncio.Lock())
        async with lock:
            instance = self._pick(name)  # a request that held the lock before us may have launched it
            if instance is not None:
                return await self._settled(instance)
            try:
                placement = await asyncio.to_thread(self.cluster.plan, LaunchRequest(name))
            except TandemError as error:
                raise planning_error(name, error) from None
            if isinstance(placement, Infeasible):
                lost = not_replaced(self.cluster.state, name)
                if lost is not None:  # it did fit, until a node left: the service is unavailable
                    raise APIError(
                        503, f"model {name!r} no longer fits this cluster: {lost}", code="model_does_not_fit"
                    )
                raise APIError(
                    400,
                    f"model {name!r} does not fit this cluster: {placement.reason}",
                    code="model_does_not_fit",
                    param="model",
                )
            log.info("a request names %s, which is not running: launching an instance", name)
            try:
                launched = await self.cluster.launch(LaunchRequest(name, wait=True, reuse=True))
            except TandemError as error:
                raise APIError(503, f"could not launch {name}: {error}") from None
            if launched.status != "ready":
                raise APIError(503, f"the instance launched for {name} failed: {launched.error}")
            return launched

    async def start(self, name: str, command: GenerateRequest) -> Generation:
        """Find (or launch) the instance and wait until its runner has accepted the request (a
        full queue is a 429). The caller owns the returned generation and must close it."""
        instance = await self.instance_for(name)
        command = with_seed(command)
        release = self.in_flight.count_in(instance)

        async def resume(lost: Instance, sent: tuple[int, ...]) -> Resumed:
            return await self._resume(command, lost, sent)

        events = self.cluster.generate(instance.instance_id, command)
        generation = Generation(events, release, instance, self.metrics.timer(instance), resume)
        await generation.start()
        return generation

    async def _resume(self, command: GenerateRequest, lost: Instance, sent: tuple[int, ...]) -> Resumed:
        """Start `command` again, after the tokens `sent`, on the instance that replaces `lost`."""
        replacement = await self._replacement_of(lost)
        release = self.in_flight.count_in(replacement)
        events = self.cluster.generate(replacement.instance_id, replace(command, resume_ids=sent))
        try:
            first = await anext(events)  # type: ignore[call-overload]
        except (TandemError, StopAsyncIteration) as error:
            release()
            raise GenerationFailed(
                f"the replacement {replacement.instance_id} did not take it: {error}"
            ) from None
        if not isinstance(first, Accepted):
            release()
            await events.aclose()  # type: ignore[attr-defined]
            detail = getattr(first, "message", None) or type(first).TAG
            raise GenerationFailed(f"the replacement {replacement.instance_id} refused it: {detail}")
        return Resumed(events, replacement, release, first)

    async def _replacement_of(self, lost: Instance) -> Instance:
        """The ready instance that took over from `lost` (following replacements of replacements);
        GenerationFailed when the coordinator found it cannot be re-placed, or `lost` still serves."""
        started = time.monotonic()
        while time.monotonic() - started < RESUME_WAIT_SECONDS:
            if not self.cluster.is_coordinator:
                await self.cluster.refresh_state()
            state = self.cluster.state
            current = state.instance(lost.instance_id)
            if current is not None and current.status != "failed":
                if time.monotonic() - started > LOSS_NOTICE_SECONDS:
                    raise GenerationFailed(f"instance {lost.instance_id} is still {current.status}")
            else:
                successor = successor_of(state, lost.instance_id)
                if isinstance(successor, str):
                    raise GenerationFailed(successor)
                if successor is not None and successor.status == "ready":
                    return successor
            await asyncio.sleep(0.25)
        raise GenerationFailed(
            f"instance {lost.instance_id} was lost and no replacement was ready within {RESUME_WAIT_SECONDS:.0f} s"
        )


def with_seed(command: GenerateRequest) -> GenerateRequest:
    """A sampled request without a seed gets one here, kept for its life: a resume on another
    instance then draws what the lost one would have drawn."""
    params = command.params
    if params.seed is not None or params.greedy or command.embed:
        return command
    return replace(command, params=replace(params, seed=secrets.randbits(63)))


def successor_of(state: ClusterState, instance_id: str) -> Instance | str | None:
    """The live instance placed to take over from `instance_id`, the reason there will be none
    (the history says it cannot be re-placed), or None (not decided yet)."""
    successor = next((i for i in state.instances if i.replaces == instance_id and i.status != "failed"), None)
    if successor is not None:
        return successor
    refused = [e for e in state.history if e.kind == "not_replaced" and e.instance_id == instance_id]
    return refused[-1].message if refused else None


def not_replaced(state: ClusterState, model: str) -> str | None:
    """Why the newest instance of `model` that was lost could not be re-placed, if the history
    says so (and no instance of it runs now)."""
    if any(i.model == model and i.status != "failed" for i in state.instances):
        return None
    refused = [e for e in state.history if e.kind == "not_replaced" and e.model == model]
    return refused[-1].message if refused else None


def planning_error(name: str, error: TandemError) -> APIError:
    """The answer when a named model cannot even be planned: the Hub has no such repo, or its
    files are neither here nor reachable now (404, with what to do), or the model is one Tandem
    cannot run (400)."""
    if isinstance(error, (HubRefused, HubUnreachable, FilesUnavailable)):
        return APIError(404, f"model {name!r}: {error}", code="model_not_found", param="model")
    return APIError(400, f"model {name!r}: {error}", param="model")


def serving_of(request: Request) -> Serving:
    """The serving of the node whose app took `request` (`mount_api` put it there)."""
    return request.app.state.serving


def without_default_tag(name: str) -> str:
    """Ollama clients say `demo:latest` for `demo`."""
    return name.removesuffix(OLLAMA_DEFAULT_TAG) if name.endswith(OLLAMA_DEFAULT_TAG) else name
