"""A forced placement names nodes by id, host name or id prefix; ambiguity and unknown names are
one clear line."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tandem.cluster.node_names import node_named, with_node_ids
from tandem.cluster.placement import DeviceAddress
from tandem.errors import InvalidRequestError
from topologies import cpu, gpu, node

NODES = [
    replace(node("6a39b210aa", gpu()), name="big-box"),
    replace(node("6a77c0ffee", cpu()), name="laptop"),
    replace(node("laptop", cpu()), name="other"),  # an id equal to another node's name: the id wins
    replace(node("f00d", cpu()), name="twin"),
    replace(node("beef", cpu()), name="twin"),
]


def test_ids_names_and_prefixes():
    assert node_named("6a39b210aa", NODES) == "6a39b210aa"
    assert node_named("big-box", NODES) == "6a39b210aa"
    assert node_named("6a3", NODES) == "6a39b210aa"
    assert node_named("laptop", NODES) == "laptop"
    stages = (
        (DeviceAddress("big-box", "cuda:0"),),
        (DeviceAddress("6a77", "cpu"), DeviceAddress("f00d", "cpu")),
    )
    assert with_node_ids(stages, NODES) == (
        (DeviceAddress("6a39b210aa", "cuda:0"),),
        (DeviceAddress("6a77c0ffee", "cpu"), DeviceAddress("f00d", "cpu")),
    )
    assert with_node_ids(None, NODES) is None


def test_ambiguous_and_unknown_names_say_so():
    with pytest.raises(
        InvalidRequestError, match=r"'twin' names several nodes \(beef, f00d\); give a node id"
    ):
        node_named("twin", NODES)
    with pytest.raises(InvalidRequestError, match=r"'6a' names several nodes"):
        node_named("6a", NODES)
    with pytest.raises(
        InvalidRequestError, match=r"no node is named 'nowhere'; the nodes are 6a39b210aa \(big-box\)"
    ):
        node_named("nowhere", NODES)
