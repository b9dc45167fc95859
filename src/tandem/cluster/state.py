"""The cluster state: one immutable value, changed only by applying events. Pure Python.

The coordinator applies events and publishes each new state (its `version` grows by one per
event); every other node keeps the latest state it has seen, so whichever node takes over as
coordinator continues from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from tandem.cluster.placement import Placement
from tandem.cluster.topology import LinkInfo, NodeId, NodeInfo, Topology
from tandem.model.stage import LayerRange

InstanceStatus = Literal["launching", "ready", "failed"]
RunnerStatus = Literal["starting", "ready", "failed"]
HistoryKind = Literal["joined", "left", "failed", "replaced", "not_replaced"]
HISTORY_LENGTH = 100  # the newest entries the state keeps


@dataclass(frozen=True)
class RunnerState:
    """One rank of an instance: which device holds which layers, and how it is doing.

    Ranks are numbered stage by stage; the ranks of one stage (its tensor-parallel group) share
    its layers, each holding its share of them."""

    rank: int
    node_id: NodeId
    device: str
    layers: LayerRange
    status: RunnerStatus = "starting"
    parameter_bytes: int | None = None  # what the runner reports it loaded
    message: str | None = None
    stage: int = 0  # index of the pipeline stage in the placement
    kv_cache_bytes: int | None = None  # the KV cache the runner reports it allocated
    engine: str | None = None  # what computes its stage, as it reports it: "torch" or "mlx"


@dataclass(frozen=True)
class Instance:
    """A model running (or starting) across the runners of a placement."""

    instance_id: str
    model: str  # as the user named it: a catalog id, a repo id or a directory
    placement: Placement
    runners: tuple[RunnerState, ...]
    status: InstanceStatus = "launching"
    master_address: str | None = None  # host:port where rank 0 gathers the process group
    error: str | None = None
    max_context: int = 0
    num_slots: int = 0
    served: bool = False  # it was ready once: a failure now is a loss, not a launch that failed
    replaces: str | None = None  # the failed instance this one was placed to take over from
    attempt: int = 0  # how many re-placements in a row led to this instance

    @property
    def driver_node(self) -> NodeId:
        """The node whose rank-0 runner takes this instance's requests."""
        return self.runners[0].node_id


@dataclass(frozen=True)
class HistoryEntry:
    """Something the cluster went through: a node joined or left, an instance failed, was
    re-placed or could not be. `at` is the coordinator's wall clock (Unix seconds)."""

    at: float
    kind: HistoryKind
    message: str
    node_id: NodeId | None = None
    instance_id: str | None = None
    model: str | None = None  # the instance's model, where the event is about an instance


@dataclass(frozen=True)
class ClusterState:
    version: int = 0
    coordinator: NodeId | None = None
    nodes: tuple[NodeInfo, ...] = ()
    links: tuple[LinkInfo, ...] = ()
    instances: tuple[Instance, ...] = ()
    history: tuple[HistoryEntry, ...] = ()  # oldest first, the newest HISTORY_LENGTH

    def topology(self) -> Topology:
        return Topology(self.nodes, self.links)

    def node(self, node_id: NodeId) -> NodeInfo | None:
        return next((n for n in self.nodes if n.node_id == node_id), None)

    def instance(self, instance_id: str) -> Instance | None:
        return next((i for i in self.instances if i.instance_id == instance_id), None)


# Events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoordinatorChanged:
    coordinator: NodeId


@dataclass(frozen=True)
class NodesChanged:
    """The coordinator's view of which nodes are alive, with their latest reports."""

    nodes: tuple[NodeInfo, ...]


@dataclass(frozen=True)
class LinksMeasured:
    source: NodeId
    links: tuple[LinkInfo, ...] = field(default=())


@dataclass(frozen=True)
class InstanceCreated:
    instance: Instance


@dataclass(frozen=True)
class MasterAddressSet:
    instance_id: str
    address: str


@dataclass(frozen=True)
class RunnerReported:
    instance_id: str
    rank: int
    status: RunnerStatus
    parameter_bytes: int | None = None
    message: str | None = None
    kv_cache_bytes: int | None = None
    engine: str | None = None


@dataclass(frozen=True)
class InstanceRemoved:
    instance_id: str


@dataclass(frozen=True)
class HistoryNoted:
    entry: HistoryEntry


Event = (
    CoordinatorChanged
    | NodesChanged
    | LinksMeasured
    | InstanceCreated
    | MasterAddressSet
    | RunnerReported
    | InstanceRemoved
    | HistoryNoted
)


def apply(state: ClusterState, event: Event) -> ClusterState:
    """The state after `event`; the version always advances."""
    changed = _apply(state, event)
    return replace(changed, version=state.version + 1)


def _apply(state: ClusterState, event: Event) -> ClusterState:
    match event:
        case CoordinatorChanged(coordinator):
            return replace(state, coordinator=coordinator)
        case NodesChanged(nodes):
            alive = {n.node_id for n in nodes}
            links = tuple(l for l in state.links if l.source in alive and l.target in alive)  # noqa: E741
            instances = tuple(_fail_if_node_lost(i, alive) for i in state.instances)
            return replace(state, nodes=nodes, links=links, instances=instances)
        case LinksMeasured(source, links):
            kept = tuple(link for link in state.links if link.source != source)
            return replace(state, links=kept + links)
        case InstanceCreated(instance):
            return replace(state, instances=(*state.instances, instance))
        case MasterAddressSet(instance_id, address):
            return _update_instance(state, instance_id, lambda i: replace(i, master_address=address))
        case RunnerReported():
            return _update_instance(state, event.instance_id, lambda i: _with_runner_report(i, event))
        case InstanceRemoved(instance_id):
            return replace(state, instances=tuple(i for i in state.instances if i.instance_id != instance_id))
        case HistoryNoted(entry):
            return replace(state, history=(*state.history, entry)[-HISTORY_LENGTH:])
    raise TypeError(f"unknown event {event!r}")


def _update_instance(state: ClusterState, instance_id: str, change) -> ClusterState:
    return replace(
        state, instances=tuple(change(i) if i.instance_id == instance_id else i for i in state.instances)
    )


def _with_runner_report(instance: Instance, report: RunnerReported) -> Instance:
    runners = tuple(
        replace(
            r,
            status=report.status,
            parameter_bytes=report.parameter_bytes,
            message=report.message,
            kv_cache_bytes=report.kv_cache_bytes,
            engine=report.engine,
        )
        if r.rank == report.rank
        else r
        for r in instance.runners
    )
    if instance.status == "failed":
        return replace(instance, runners=runners)
    if report.status == "failed":
        return replace(
            instance,
            runners=runners,
            status="failed",
            error=f"rank {report.rank} on node {runners[report.rank].node_id}: {report.message}",
        )
    if all(r.status == "ready" for r in runners):
        return replace(instance, runners=runners, status="ready", served=True)
    return replace(instance, runners=runners)


def _fail_if_node_lost(instance: Instance, alive: set[NodeId]) -> Instance:
    lost = [r for r in instance.runners if r.node_id not in alive]
    if not lost or instance.status == "failed":
        return instance
    return replace(instance, status="failed", error=f"node {lost[0].node_id} left the cluster")
