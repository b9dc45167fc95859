"""Requests name models, never paths: a real node offers 'demo', catalog and repo ids, and the
checkpoints under its --models-dir folders; any other path is refused with the same words
whether it is a file, a directory, a checkpoint elsewhere or nothing at all."""

from __future__ import annotations

import pytest

from nodes import launch, running_nodes, start_node, wait_for


@pytest.fixture(scope="module")
def node(tmp_path_factory, checkpoint_factory):
    offered = checkpoint_factory("llama-gqa")
    with running_nodes(
        tmp_path_factory.mktemp("paths"), 1, extra_args=("--models-dir", str(offered.path))
    ) as (node,):
        node.offered = offered.path
        yield node


def test_paths_outside_the_models_dirs_get_one_answer_whether_or_not_they_exist(node, checkpoint_factory):
    elsewhere = checkpoint_factory("qwen3-qknorm").path  # a real checkpoint, but not offered
    probes = ["/etc/passwd", "/etc", "/nonexistent/model", str(elsewhere), "../../etc/passwd", "~/.ssh"]
    answers = set()
    for route in ("/v1/placements", "/v1/instances"):
        for path in probes:
            response = node.http.post(route, json={"model": path})
            assert response.status_code == 400, (route, path, response.text)
            answers.add(response.json()["error"].replace(repr(path), "PATH"))
    assert len(answers) == 1, answers
    (answer,) = answers
    assert "is not offered by this node" in answer and "--models-dir" in answer


def test_an_offered_checkpoint_is_placed(node):
    response = node.http.post("/v1/placements", json={"model": str(node.offered), "context": 64})
    assert response.status_code == 200, response.text
    assert response.json()["feasible"] is True


def test_a_member_launches_what_it_offers_though_the_coordinator_does_not(tmp_path, checkpoint_factory):
    """The node that takes the request checks the name; the coordinator trusts its signed forward."""
    offered = checkpoint_factory("llama-gqa").path
    with running_nodes(tmp_path, 1) as (coordinator,):
        member = start_node(
            tmp_path, "member", [coordinator.address], extra_args=("--models-dir", str(offered))
        )
        try:
            wait_for(member.cluster, timeout=60, what="the member to answer")
            wait_for(
                lambda: len(member.cluster()["nodes"]) == 2 and len(coordinator.cluster()["nodes"]) == 2,
                timeout=30,
                what="the two nodes to meet",
            )
            assert member.cluster()["coordinator"] == coordinator.node_id  # started first
            refused = coordinator.http.post("/v1/instances", json={"model": str(offered)})
            assert refused.status_code == 400 and "is not offered by this node" in refused.json()["error"]
            instance = launch(member, model=str(offered), context=64)
            assert instance["model"] == str(offered)
        finally:
            member.stop()
