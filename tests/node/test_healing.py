"""The coordinator's decisions about failed instances, and how a lost request finds where it
goes on: pure functions over the cluster state."""

from __future__ import annotations

from dataclasses import replace

from tandem.api.serving import not_replaced, successor_of, with_seed
from tandem.cluster.placement import Placement, PlacementRequest
from tandem.cluster.state import (
    ClusterState,
    HistoryNoted,
    Instance,
    InstanceCreated,
    RunnerReported,
    RunnerState,
    apply,
)
from tandem.cluster.topology import NodeInfo
from tandem.model.sampling_params import SamplingParams
from tandem.model.stage import LayerRange
from tandem.node.healing import (
    REPLACE_DELAY_SECONDS,
    failure_reason,
    instances_to_replace,
    membership_notes,
    note,
    relaunch_request,
    replace_now,
    stale_launch_failures,
)
from tandem.protocol.runner import GenerateRequest

REQUEST = PlacementRequest(context_length=256, num_sequences=4, quantize="int4", dtype="float32")


def instance(instance_id: str, **fields) -> Instance:
    placement = Placement("demo", 6, (), REQUEST)
    runners = (RunnerState(0, "a", "cpu", LayerRange(0, 3)), RunnerState(1, "b", "cpu", LayerRange(3, 6)))
    return Instance(instance_id, "demo", placement, runners, max_context=256, num_slots=4, **fields)


def test_an_instance_is_served_once_every_runner_was_ready_and_keeps_that_when_it_fails():
    state = apply(ClusterState(), InstanceCreated(instance("x")))
    state = apply(state, RunnerReported("x", 0, "ready"))
    assert not state.instance("x").served  # type: ignore[union-attr]
    state = apply(state, RunnerReported("x", 1, "ready"))
    assert state.instance("x").served  # type: ignore[union-attr]
    state = apply(state, RunnerReported("x", 1, "failed", message="runner exited with code 1"))
    failed = state.instance("x")
    assert failed is not None and failed.status == "failed" and failed.served
    assert instances_to_replace(state) == (failed,)


def test_launch_failures_are_not_replaced_but_cleared_once_a_newer_launch_exists():
    broken = instance("x", status="failed", error="out of memory")
    state = ClusterState(instances=(broken,))
    assert instances_to_replace(state) == () and stale_launch_failures(state) == ()
    state = replace(state, instances=(broken, instance("y")))
    assert stale_launch_failures(state) == (broken,)


def test_a_failed_replacement_is_tried_again_and_a_replacement_keeps_the_launch_settings():
    retry = instance("y", status="failed", replaces="x", attempt=1, error="rank 1: no such node")
    assert instances_to_replace(ClusterState(instances=(retry,))) == (retry,)
    request = relaunch_request(retry)
    assert (request.model, request.context, request.sequences) == ("demo", 256, 4)
    assert (request.quantize, request.dtype, request.devices) == ("int4", "float32", None)


def test_a_node_loss_is_replaced_at_once_a_runner_failure_after_membership_could_notice():
    lost = instance("x", status="failed", served=True, error="node b left the cluster")
    crashed = instance("x", status="failed", served=True, error="rank 0 on node a: runner exited with code 1")
    assert replace_now(lost, 0.0)
    assert not replace_now(crashed, 1.0) and replace_now(crashed, REPLACE_DELAY_SECONDS)


def test_a_lost_request_waits_for_the_live_replacement_or_hears_why_there_is_none():
    assert successor_of(ClusterState(), "x") is None  # not decided yet
    launching = instance("y", replaces="x")
    state = ClusterState(instances=(launching,))
    assert successor_of(state, "x") == launching  # the caller waits until it is ready
    state = replace(state, instances=(replace(launching, status="failed"),))
    assert successor_of(state, "x") is None
    state = apply(
        state,
        HistoryNoted(
            note("not_replaced", "x was lost (node b left) and cannot be re-placed", instance_id="x")
        ),
    )
    assert successor_of(state, "x") == "x was lost (node b left) and cannot be re-placed"


def test_joins_and_leaves_are_noted_against_the_recorded_nodes():
    before = ClusterState(
        nodes=(NodeInfo("a", "h", "127.0.0.1:1", ()), NodeInfo("b", "h", "127.0.0.1:2", ()))
    )
    entries = membership_notes(before, {"a", "c"})
    assert [(e.kind, e.node_id) for e in entries] == [("joined", "c"), ("left", "b")]


def test_a_sampled_request_keeps_one_seed_for_its_life_so_a_resume_draws_the_same():
    sampled = with_seed(GenerateRequest(prompt="hi", params=SamplingParams(temperature=0.7)))
    assert sampled.params.seed is not None
    assert with_seed(sampled) == sampled  # a resume starts from the kept command
    chosen = GenerateRequest(prompt="hi", params=SamplingParams(temperature=0.7, seed=5))
    assert with_seed(chosen).params.seed == 5
    greedy = GenerateRequest(prompt="hi", params=SamplingParams(temperature=0.0))
    assert with_seed(greedy) == greedy


def test_a_failure_is_told_by_the_node_that_left_not_by_the_rank_that_saw_its_peer_go():
    seen_by_rank_0 = instance("x", status="failed", served=True, error="rank 0 on node a: connection reset")
    both = ClusterState(nodes=(NodeInfo("a", "h", "127.0.0.1:1", ()), NodeInfo("b", "h", "127.0.0.1:2", ())))
    assert failure_reason(seen_by_rank_0, both) == "rank 0 on node a: connection reset"
    only_a = replace(both, nodes=both.nodes[:1])
    assert failure_reason(seen_by_rank_0, only_a) == "node b left the cluster"


def test_new_requests_hear_why_a_lost_model_was_not_re_placed_until_it_runs_again():
    entry = note(
        "not_replaced", "x of demo was lost (node b left the cluster): no fit", instance_id="x", model="demo"
    )
    state = apply(ClusterState(), HistoryNoted(entry))
    assert not_replaced(state, "demo") == entry.message
    assert not_replaced(state, "other") is None
    assert not_replaced(replace(state, instances=(instance("y"),)), "demo") is None
