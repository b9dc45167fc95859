"""What the coordinator does about failed instances: pure decisions over the cluster state.

An instance that was serving and failed (a node left, a runner died) is re-placed on what the
cluster has left, with the settings it was launched with, and removed; requests that were in
flight on it resume on the replacement (`api/generation.py`). An instance that failed while
launching stays, so its error can be read, until a newer instance of its model exists.
"""

from __future__ import annotations

import time

from tandem.cluster.state import ClusterState, HistoryEntry, HistoryKind, Instance
from tandem.node.options import PEER_TIMEOUT
from tandem.protocol.control import LaunchRequest

MAX_REPLACE_ATTEMPTS = 3  # replacements that fail to launch, in a row, before giving up
# A runner that fails is often the first sign of a node's loss, which membership learns only
# after PEER_TIMEOUT: re-placing sooner could pick the lost node again.
REPLACE_DELAY_SECONDS = PEER_TIMEOUT + 1.0


def instances_to_replace(state: ClusterState) -> tuple[Instance, ...]:
    """Failed instances that had been serving, and failed replacements of them: each is
    re-placed (or found not to fit)."""
    return tuple(i for i in state.instances if i.status == "failed" and (i.served or i.replaces is not None))


def replace_now(instance: Instance, failed_for: float) -> bool:
    """Whether to re-place a failed instance now: at once when a node's loss is known to be the
    cause, else once membership has had time to notice a lost node."""
    node_lost = (instance.error or "").endswith("left the cluster")
    return node_lost or failed_for >= REPLACE_DELAY_SECONDS


def stale_launch_failures(state: ClusterState) -> tuple[Instance, ...]:
    """Instances that failed to launch and have a newer instance of their model beside them."""
    stale = []
    for position, instance in enumerate(state.instances):
        if instance.status != "failed" or instance.served:
            continue
        later = state.instances[position + 1 :]
        if any(other.model == instance.model for other in later):
            stale.append(instance)
    return tuple(stale)


def failure_reason(instance: Instance, state: ClusterState) -> str:
    """Why a failed instance failed, as the history and the requests left waiting hear it: the
    nodes of its runners that left the cluster, where any did (the first error reported is often
    a runner's about its dead peer, naming the node that is still alive), else its error."""
    alive = {node.node_id for node in state.nodes}
    gone = sorted({runner.node_id for runner in instance.runners} - alive)
    if gone:
        return f"node {', '.join(gone)} left the cluster"
    return instance.error or "its runners stopped"


def relaunch_request(instance: Instance) -> LaunchRequest:
    """The launch that replaces `instance`: its model, context, sequences, weights and dtype, on
    whatever devices the placement finds now (devices it was forced onto may be gone)."""
    request = instance.placement.request
    return LaunchRequest(
        model=instance.model,
        context=instance.max_context,
        sequences=instance.num_slots,
        quantize=request.quantize,  # type: ignore[arg-type]
        dtype=request.dtype,  # type: ignore[arg-type]
    )


def note(
    kind: HistoryKind,
    message: str,
    node_id: str | None = None,
    instance_id: str | None = None,
    model: str | None = None,
) -> HistoryEntry:
    return HistoryEntry(time.time(), kind, message, node_id=node_id, instance_id=instance_id, model=model)


def membership_notes(before: ClusterState, alive_ids: set[str]) -> list[HistoryEntry]:
    """Joins and leaves between the recorded nodes and the ones alive now."""
    known = {n.node_id for n in before.nodes}
    entries = [note("joined", f"node {n} joined", node_id=n) for n in sorted(alive_ids - known)]
    entries += [note("left", f"node {n} left the cluster", node_id=n) for n in sorted(known - alive_ids)]
    return entries
