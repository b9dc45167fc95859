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

from fastapi import Request

from tandem.api.catalog import launchable_by_name, servable_model_names
from tandem.api.cluster import ClusterAccess
from tandem.api.errors import APIError
from tandem.api.generation import Generation
from tandem.api.limits import InFlightLimits
from tandem.api.metrics import ServingMetrics
from tandem.cluster.placement import Infeasible
from tandem.cluster.state import Instance
from tandem.errors import TandemError
from tandem.protocol.control import LaunchRequest
from tandem.protocol.runner import GenerateRequest
from tandem.store.fetch import FilesUnavailable
from tandem.store.hub import HubRefused, HubUnreachable

log = logging.getLogger("tandem.api")

OLLAMA_DEFAULT_TAG = ":latest"


class Serving:
    """The API's view of the cluster's instances; one per node."""

    def __init__(self, cluster: ClusterAccess, requests_per_slot: int) -> None:
        self.cluster = cluster
        self.limits = InFlightLimits(requests_per_slot)
        self.metrics = ServingMetrics(cluster.node_id, lambda: cluster.state, self.limits.in_flight)
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
            return min(ready, key=self.limits.load)
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
        """Find (or launch) the instance, admit the request under its limit, and wait until the
        runner has accepted it. The caller owns the returned generation and must close it."""
        instance = await self.instance_for(name)
        try:
            release = self.limits.admit(instance)
        except APIError:
            self.metrics.refused(instance)
            raise
        events = self.cluster.generate(instance.instance_id, command)
        generation = Generation(events, release, instance, self.metrics.timer(instance))
        await generation.start()
        return generation


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
