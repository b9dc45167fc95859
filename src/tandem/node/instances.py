"""Model instances: launching them across the cluster, stopping them, and routing requests.

Launch (coordinator): place the model, record the instance, start rank 0 on its node (which
reports the port of the process group's rendezvous), then every other rank: one per member of
each stage, so a stage run by a tensor-parallel group of k devices gets k consecutive ranks. Runners report
ready or failed to their node, which reports to the coordinator. Requests for an instance go to
the node of its rank-0 runner; tokens stream back to whichever node took the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import replace

from tandem import settings
from tandem.cluster.image_timing import with_image_timing
from tandem.cluster.node_names import with_node_ids
from tandem.cluster.placement import DeviceAddress, Infeasible, Placement, PlacementRequest, place
from tandem.cluster.state import (
    HistoryNoted,
    Instance,
    InstanceCreated,
    InstanceRemoved,
    MasterAddressSet,
    RunnerReported,
    RunnerState,
)
from tandem.errors import InvalidRequestError, PeerUnreachable, TandemError, UnknownInstance
from tandem.model.config import context_size, load_model_config
from tandem.model.image_config import is_image_model_dir, load_image_model_config, loaded_image_quantize
from tandem.model.image_shapes import image_model_shape
from tandem.model.shapes import ModelShape, shape_from_model_config
from tandem.node.healing import (
    MAX_REPLACE_ATTEMPTS,
    failure_reason,
    instances_to_replace,
    note,
    relaunch_request,
    replace_now,
    stale_launch_failures,
)
from tandem.node.model_files import ModelFiles
from tandem.node.models import check_requested_model
from tandem.node.node import Node
from tandem.node.options import HEARTBEAT_INTERVAL
from tandem.protocol.control import (
    Done,
    InstanceLoad,
    LaunchRequest,
    RunnerStarted,
    StartRunner,
    StopRunners,
)
from tandem.protocol.runner import EngineName, GenerateRequest, RequestEvent, RunnerSpec, Task, ends_request

log = logging.getLogger("tandem.instances")

DEFAULT_SEQUENCES = 8
DEFAULT_MAX_PREFILL_TOKENS = 2048  # tokens of prompts computed in one step (the engine's default)
ORPHAN_GRACE_SECONDS = 15.0  # a runner whose instance this node has not yet heard of may be new


def parse_devices(values: tuple[str, ...] | None) -> tuple[tuple[DeviceAddress, ...], ...] | None:
    """Forced stages as "NODE/device" strings, NODE an id, a host name or an id prefix (several
    joined by "+" form a tensor-parallel group: "a/cuda:0+a/cuda:1")."""
    if not values:
        return None
    stages = []
    for value in values:
        stage = []
        for part in value.split("+"):
            node_id, _, device = part.partition("/")
            if not node_id or not device:
                raise InvalidRequestError(
                    f"devices entries look like NODE/cpu, NODE/cuda:0 or A/cuda:0+B/cuda:0 (NODE: an id or a host name), not {value!r}"
                )
            stage.append(DeviceAddress(node_id, device))
        stages.append(tuple(stage))
    return tuple(stages)


def live_instance_of(instances: tuple[Instance, ...], model: str) -> Instance | None:
    """An instance of `model` that is ready (first choice) or launching."""
    live = [i for i in instances if i.model == model and i.status in ("ready", "launching")]
    return min(live, key=lambda i: i.status != "ready", default=None)


class InstanceManager:
    """Launching instances across the cluster, stopping them, and routing their requests."""

    def __init__(self, node: Node, files: ModelFiles) -> None:
        self.node = node
        self.files = files
        self._runner_started: dict[str, float] = {}
        self._failed_at: dict[str, float] = {}  # instance id -> when heal() first saw it failed

    # --- launching (any node asks; the coordinator decides) -----------------------------------

    async def launch(self, request: LaunchRequest) -> Instance:
        """A request from this node's own API: its model must be one this node offers."""
        check_requested_model(request.model, self.node.options.models_dirs)
        return await self.launch_checked(request)

    async def launch_checked(self, request: LaunchRequest) -> Instance:
        """A launch whose model name was already checked by the node that took the request (this
        one, or a cluster member that signed its forward): the coordinator need not offer a
        directory that a member offers."""
        if not self.node.is_coordinator:
            address = self.node.reachable_address(self.node.coordinator, "the coordinator")
            launched = await self.node.control.call(
                address,
                "POST",
                "/internal/instances",
                request,
                reply=Instance,
                timeout=600,
                to=self.node.coordinator,
            )
            await self.node.refresh_state()
            return launched
        instance = await self._launch_as_coordinator(request)
        if request.wait:
            instance = await self.wait_until_settled(instance.instance_id)
        return instance

    def plan(self, request: LaunchRequest) -> Placement | Infeasible:
        """The placement a request from this node's own API would get now."""
        check_requested_model(request.model, self.node.options.models_dirs)
        return self.plan_checked(request)

    def plan_checked(self, request: LaunchRequest) -> Placement | Infeasible:
        """The placement a launch whose model name was already checked would get now."""
        directory = self.files.config_dir(request.model)  # fetches config.json if need be
        if not is_image_model_dir(directory):
            return self.plan_shape(
                shape_from_model_config(load_model_config(directory), request.model), request
            )
        # an image model: its transformer's blocks are the layers to split, by memory; its
        # compute-bound step times join the plan's notes
        config = load_image_model_config(directory)
        loaded_image_quantize(config, request.quantize)  # a stored-quantized transformer: one line
        shape = image_model_shape(config)
        placement = self.plan_shape(shape.as_model_shape(), request)
        if isinstance(placement, Infeasible):
            return placement
        return with_image_timing(
            placement, shape, self.node.state.topology(), config.default_steps, config.default_size
        )

    def plan_shape(self, shape: ModelShape, request: LaunchRequest) -> Placement | Infeasible:
        """The placement of a model known by its shape alone (a catalog card: nothing downloaded)."""
        context = context_size(request.context, shape.max_context)
        placement_request = PlacementRequest(
            context_length=context,
            num_sequences=request.sequences or DEFAULT_SEQUENCES,
            devices=with_node_ids(parse_devices(request.devices), self.node.state.nodes),
            min_stages=request.min_stages or 1,
            quantize=request.quantize,
            dtype=request.dtype,
        )
        return place(shape, self.node.state.topology(), placement_request)

    async def _launch_as_coordinator(
        self, request: LaunchRequest, replaces: str | None = None, attempt: int = 0
    ) -> Instance:
        placement = await asyncio.to_thread(self.plan_checked, request)  # may fetch the config: off the loop
        if isinstance(placement, Infeasible):
            raise InvalidRequestError(f"cannot place {request.model}: {placement.reason}")
        if request.reuse:  # no await from this check to InstanceCreated: one launch wins
            existing = live_instance_of(self.node.state.instances, request.model)
            if existing is not None:
                return existing
        instance_id = secrets.token_hex(4)
        members = [
            (index, stage, member) for index, stage in enumerate(placement.stages) for member in stage.members
        ]
        runners = tuple(  # one rank per member, stage by stage: a stage's ranks are its group
            RunnerState(rank, member.node_id, member.torch_device, stage.layers, stage=index)
            for rank, (index, stage, member) in enumerate(members)
        )
        instance = Instance(
            instance_id=instance_id,
            model=request.model,
            placement=placement,
            runners=runners,
            max_context=placement.request.context_length,
            num_slots=placement.request.num_sequences,
            replaces=replaces,
            attempt=attempt,
        )
        self.node.apply(InstanceCreated(instance))
        log.info("launching %s as %s:\n%s", instance.model, instance_id, "\n".join(placement.explain()))
        try:
            await self.files.prepare_instance(instance)  # every node fetches its files, at once
            driver_address = self.node.reachable_address(runners[0].node_id)
            driver_host = driver_address.rsplit(":", 1)[0]
            started = await self._start_runner(instance, 0, master_host=driver_host, master_port=0)
            if len(runners) > 1:
                if started.port is None:
                    raise TandemError("rank 0 did not report its rendezvous port")
                self.node.apply(MasterAddressSet(instance_id, f"{driver_host}:{started.port}"))
                await asyncio.gather(
                    *(
                        self._start_runner(instance, rank, driver_host, started.port)
                        for rank in range(1, len(runners))
                    )
                )
        except TandemError as error:
            await self.node.submit_runner_report(RunnerReported(instance_id, 0, "failed", None, str(error)))
        return self.node.state.instance(instance_id) or instance

    async def _start_runner(
        self, instance: Instance, rank: int, master_host: str, master_port: int
    ) -> RunnerStarted:
        runner = instance.runners[rank]
        spec = RunnerSpec(
            instance_id=instance.instance_id,
            rank=rank,
            world_size=len(instance.runners),
            model_dir=self.files.pinned(instance.model),  # the commit the coordinator planned with
            layer_start=runner.layers.start,
            layer_end=runner.layers.end,
            num_layers=instance.placement.num_layers,
            device=runner.device,
            dtype=instance.placement.request.dtype,
            max_context=instance.max_context,
            num_slots=instance.num_slots,
            max_prefill_tokens=DEFAULT_MAX_PREFILL_TOKENS,
            backend=instance.placement.backend,  # type: ignore[arg-type]
            quantize=instance.placement.request.quantize,
            master_host=master_host,
            master_port=master_port,
            stage_sizes=tuple(len(stage.members) for stage in instance.placement.stages),
            stage_backends=tuple(stage.backend for stage in instance.placement.stages),  # type: ignore[arg-type]
            options=settings.engine_options(),  # this node's; every rank of the instance runs the same
            engine=self._engine_of(runner),
            task=await asyncio.to_thread(self.task_of, instance.model),
        )
        if runner.node_id == self.node.node_id:
            return await self.start_local_runner(StartRunner(spec))
        address = self.node.reachable_address(runner.node_id)
        return await self.node.control.call(
            address,
            "POST",
            "/internal/runners",
            StartRunner(spec),
            reply=RunnerStarted,
            timeout=120,
            to=runner.node_id,
        )

    def _engine_of(self, runner: RunnerState) -> EngineName:
        """The engine the runner's device runs, as its node advertises it."""
        node = self.node.state.node(runner.node_id)
        device = node.device(runner.device) if node is not None else None
        return device.engine if device is not None else "torch"

    def task_of(self, model: str) -> Task:
        """What `model` makes: images (a diffusers pipeline directory) or text. Blocking: reads
        its config files, fetched for planning already."""
        return "image" if is_image_model_dir(self.files.config_dir(model)) else "text"

    async def start_local_runner(self, request: StartRunner) -> RunnerStarted:
        """Start a runner here; for rank 0 of a pipeline, wait for its rendezvous port."""
        spec = replace(
            request.spec,
            model_dir=str(await self.files.ensure_stage(request.spec.model_dir, request.spec.stage)),
            threads=self.node.options.runner_threads,
            queue_limit=self.node.options.queue_limit,  # the node running rank 0 sets it
        )
        runner = await self.node.supervisor.start(spec)
        self._runner_started[spec.instance_id] = time.monotonic()
        if spec.rank == 0 and spec.world_size > 1:
            return RunnerStarted(await asyncio.wait_for(runner.listening, timeout=120))
        return RunnerStarted()

    async def wait_until_settled(self, instance_id: str, timeout: float = 600) -> Instance:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            instance = self.node.state.instance(instance_id)
            if instance is None:
                raise UnknownInstance(f"instance {instance_id} was removed while starting")
            if instance.status != "launching":
                return instance
            await asyncio.sleep(0.2)
        raise TandemError(f"instance {instance_id} did not start within {timeout:.0f} s")

    # --- stopping -------------------------------------------------------------------------------

    async def stop(self, instance_id: str) -> Done:
        if not self.node.is_coordinator:
            address = self.node.reachable_address(self.node.coordinator, "the coordinator")
            await self.node.control.call(
                address, "DELETE", f"/internal/instances/{instance_id}", to=self.node.coordinator
            )
            return Done()
        instance = self.node.state.instance(instance_id)
        if instance is None:
            raise UnknownInstance(f"no instance {instance_id}")
        self.node.apply(InstanceRemoved(instance_id))
        await self._stop_runners_everywhere(instance)
        return Done()

    async def stop_local_runners(self, request: StopRunners) -> Done:
        await self.node.supervisor.stop_instance(request.instance_id)
        return Done()

    async def _stop_runners_everywhere(self, instance: Instance) -> None:
        for node_id in {r.node_id for r in instance.runners}:
            if node_id == self.node.node_id:
                await self.node.supervisor.stop_instance(instance.instance_id)
                continue
            address = self.node.address_of(node_id)
            if address is not None:
                with contextlib.suppress(PeerUnreachable):
                    await self.node.control.call(
                        address,
                        "POST",
                        "/internal/runners/stop",
                        StopRunners(instance.instance_id),
                        to=node_id,
                    )

    async def reconcile_forever(self) -> None:
        """Coordinator duty, each heartbeat interval: re-place instances that failed while
        serving, clear launch failures a newer launch superseded, stop runners nobody needs."""
        while True:
            if self.node.is_coordinator:
                self.heal()
                await self.reconcile()
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    def heal(self) -> None:
        """Coordinator only: each failed serving instance leaves the state (its runners
        stopped) and a replacement is launched in the background; launch failures that a newer
        launch superseded are cleared."""
        for instance in stale_launch_failures(self.node.state):
            self.node.apply(InstanceRemoved(instance.instance_id))
        now = time.monotonic()
        for instance in instances_to_replace(self.node.state):
            failed_at = self._failed_at.setdefault(instance.instance_id, now)
            if not replace_now(instance, now - failed_at):
                continue
            self._failed_at.pop(instance.instance_id, None)
            reason = failure_reason(instance, self.node.state)
            self.node.apply(InstanceRemoved(instance.instance_id))
            message = f"instance {instance.instance_id} of {instance.model} failed: {reason}"
            self.node.apply(HistoryNoted(note("failed", message, instance_id=instance.instance_id)))
            if not instance.served and instance.attempt >= MAX_REPLACE_ATTEMPTS:
                message = (
                    f"instance {instance.replaces} of {instance.model} was lost and {instance.attempt} "
                    f"replacements failed; the last: {reason}"
                )
                log.warning("%s", message)
                self.node.apply(
                    HistoryNoted(
                        note("not_replaced", message, instance_id=instance.replaces, model=instance.model)
                    )
                )
                continue
            self.node.keep_task_running(self._replace(instance, reason))

    async def _replace(self, failed: Instance, reason: str) -> None:
        """Launch the instance that takes over from `failed` (which failed for `reason`). A
        replacement that failed to launch is retried under the id of the instance that was lost,
        so requests waiting for it find it."""
        await self._stop_runners_everywhere(failed)
        lost = failed.instance_id if failed.served else (failed.replaces or failed.instance_id)
        attempt = 1 if failed.served else failed.attempt + 1
        try:
            replacement = await self._launch_as_coordinator(
                relaunch_request(failed), replaces=lost, attempt=attempt
            )
        except TandemError as error:
            message = (
                f"instance {lost} of {failed.model} was lost ({reason}) and cannot be re-placed: {error}"
            )
            log.warning("%s", message)
            self.node.apply(HistoryNoted(note("not_replaced", message, instance_id=lost, model=failed.model)))
            return
        where = ", ".join(sorted({r.node_id for r in replacement.runners}))
        message = (
            f"instance {failed.instance_id} of {failed.model} re-placed as {replacement.instance_id} "
            f"on {where}: {replacement.status}"
        )
        log.info("%s", message)
        self.node.apply(HistoryNoted(note("replaced", message, instance_id=replacement.instance_id)))

    async def reconcile(self) -> None:
        """Stop local runners of instances that failed or that the cluster no longer has."""
        for instance_id in self.node.supervisor.instance_ids():
            instance = self.node.state.instance(instance_id)
            young = time.monotonic() - self._runner_started.get(instance_id, 0.0) < ORPHAN_GRACE_SECONDS
            if (instance is None and not young) or (instance is not None and instance.status == "failed"):
                log.info(
                    "stopping local runners of instance %s (%s)",
                    instance_id,
                    "failed" if instance else "no longer in the cluster",
                )
                await self.node.supervisor.stop_instance(instance_id)

    # --- requests -------------------------------------------------------------------------------

    async def ready_instance(self, instance_id: str) -> Instance:
        instance = self.node.state.instance(instance_id)
        if (instance is None or instance.status != "ready") and not self.node.is_coordinator:
            await self.node.refresh_state()  # our copy may be a heartbeat behind the coordinator's
            instance = self.node.state.instance(instance_id)
        if instance is None:
            raise UnknownInstance(f"no instance {instance_id}")
        if instance.status != "ready":
            detail = f": {instance.error}" if instance.error else ""
            raise InvalidRequestError(f"instance {instance_id} is {instance.status}{detail}")
        return instance

    async def load(self, instance_id: str) -> InstanceLoad:
        """The instance's request counts, from the node of its rank-0 runner."""
        instance = await self.ready_instance(instance_id)
        if instance.driver_node != self.node.node_id:
            address = self.node.reachable_address(instance.driver_node)
            return await self.node.control.call(
                address,
                "GET",
                f"/internal/instances/{instance_id}/load",
                reply=InstanceLoad,
                to=instance.driver_node,
            )
        runner = self.node.supervisor.driver(instance_id)
        if runner is None:
            raise TandemError(f"instance {instance_id} has no runner on this node")
        spec = runner.spec
        return InstanceLoad(runner.load.requests, runner.load.waiting, spec.num_slots, spec.queue_limit)

    async def generate(self, instance_id: str, request: GenerateRequest) -> AsyncIterator[RequestEvent]:
        """Events of one request, wherever the instance's rank 0 runs. Closing the iterator early
        (the client went away) aborts the request and frees its slot."""
        instance = await self.ready_instance(instance_id)
        if instance.driver_node != self.node.node_id:
            address = self.node.reachable_address(instance.driver_node)
            async for event in self.node.control.stream(
                address,
                f"/internal/instances/{instance_id}/generate",
                request,
                RequestEvent,
                to=instance.driver_node,
            ):
                yield event
            return
        runner = self.node.supervisor.driver(instance_id)
        if runner is None:
            raise TandemError(f"instance {instance_id} has no runner on this node")
        request_id = secrets.token_hex(8)
        queue = await runner.submit(request_id, request)
        done = False
        try:
            while not done:
                event = await queue.get()
                done = ends_request(event)
                yield event
        finally:
            if not done:
                await runner.abort(request_id)
