"""Requests name models, never paths: a real node offers 'demo', catalog and repo ids, and the
checkpoints under its --models-dir folders; any other path is refused with the same words
whether it is a file, a directory, a checkpoint elsewhere or nothing at all."""

from __future__ import annotations

import pytest

from nodes import running_nodes


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
