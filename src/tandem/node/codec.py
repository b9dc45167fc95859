"""JSON for the cluster's values (state, topology, placements), validated on the way in.

The values are plain frozen dataclasses; pydantic's TypeAdapter turns them into JSON and back,
checking every field, so nothing from the network is trusted unchecked (and nothing is pickled).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import TypeAdapter

from tandem.cluster.state import ClusterState
from tandem.cluster.topology import LinkInfo, NodeInfo

T = TypeVar("T")
_ADAPTERS: dict[Any, TypeAdapter] = {}


def _adapter(kind: Any) -> TypeAdapter:
    if kind not in _ADAPTERS:
        _ADAPTERS[kind] = TypeAdapter(kind)
    return _ADAPTERS[kind]


def to_jsonable(value: Any) -> Any:
    return _adapter(type(value)).dump_python(value, mode="json")


def from_jsonable(kind: type[T], data: Any) -> T:
    return _adapter(kind).validate_python(data)


def state_to_json(state: ClusterState) -> dict[str, Any]:
    return to_jsonable(state)


def state_from_json(data: Any) -> ClusterState:
    return from_jsonable(ClusterState, data)


def node_from_json(data: Any) -> NodeInfo:
    return from_jsonable(NodeInfo, data)


def links_from_json(data: Any) -> tuple[LinkInfo, ...]:
    return from_jsonable(tuple[LinkInfo, ...], data)
