"""A cluster written down as JSON, standing in for a live one (planning, tests, examples).

Units are the ones people read off spec sheets: GB (10⁹ bytes), GB/s for memory bandwidth,
TFLOP/s for matrix throughput, Gbit/s for links, milliseconds for latency.

    {"nodes": [{"id": "gpu-box", "devices": [
         {"kind": "cuda", "name": "NVIDIA RTX 4090", "memory_total_gb": 24, "memory_free_gb": 23,
          "memory_bandwidth_gb_per_s": 1008, "matmul_tflops": 165}]}],
     "links": [{"source": "gpu-box", "target": "cpu-box", "latency_ms": 0.2, "bandwidth_gbit_per_s": 10}]}

A link measured one way stands for both ways unless the reverse is listed too. A device's
"engine" is "torch" (the default) or "mlx": a "metal" device (an Apple-silicon GPU) always, a
CPU when its node gives it to MLX (`tandem node --engine mlx`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tandem.cluster.topology import DeviceInfo, LinkInfo, NodeInfo, Topology
from tandem.errors import TandemError

_NODE_KEYS = {"id", "name", "address", "version", "devices"}
_DEVICE_KEYS = {
    "kind",
    "index",
    "name",
    "memory_total_gb",
    "memory_free_gb",
    "memory_bandwidth_gb_per_s",
    "matmul_tflops",
    "engine",
}
_LINK_KEYS = {"source", "target", "latency_ms", "bandwidth_gbit_per_s"}


def load_topology(path: str | Path) -> Topology:
    """Read a topology file; every problem is a one-line `TandemError` naming the file and the spot."""
    path = Path(path).expanduser()
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise TandemError(f"topology file {path} not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise TandemError(f"cannot read topology file {path}: {error}") from None
    except json.JSONDecodeError as error:
        raise TandemError(f"{path}: not valid JSON: {error}") from None
    return parse_topology(raw, source=str(path))


def parse_topology(raw: Any, source: str = "topology") -> Topology:
    """Build a Topology from the decoded JSON of a topology file."""
    top = _object(raw, source, {"nodes", "links"})
    nodes_raw = _list(top, "nodes", source)
    if not nodes_raw:
        raise TandemError(f"{source}: nodes must list at least one node")
    nodes = tuple(_node(item, f"{source}: nodes[{index}]") for index, item in enumerate(nodes_raw))
    seen: set[str] = set()
    for node in nodes:
        if node.node_id in seen:
            raise TandemError(f"{source}: node id {node.node_id!r} appears twice")
        seen.add(node.node_id)
    links_raw = _list(top, "links", source) if "links" in top else []
    links = tuple(_link(item, f"{source}: links[{index}]", seen) for index, item in enumerate(links_raw))
    return Topology(nodes=nodes, links=links)


def topology_to_dict(topology: Topology) -> dict[str, Any]:
    """The JSON form of a topology (what `parse_topology` reads back), e.g. to save a live cluster."""
    return {
        "nodes": [
            {
                "id": node.node_id,
                "name": node.name,
                "address": node.address,
                "devices": [
                    {
                        "kind": device.kind,
                        "index": device.index,
                        "name": device.name,
                        "memory_total_gb": device.memory_total / 1e9,
                        "memory_free_gb": device.memory_free / 1e9,
                        "memory_bandwidth_gb_per_s": device.memory_bandwidth / 1e9,
                        "matmul_tflops": device.matmul_flops / 1e12,
                        "engine": device.engine,
                    }
                    for device in node.devices
                ],
            }
            for node in topology.nodes
        ],
        "links": [
            {
                "source": link.source,
                "target": link.target,
                "latency_ms": link.latency * 1e3,
                "bandwidth_gbit_per_s": link.bandwidth * 8 / 1e9,
            }
            for link in topology.links
        ],
    }


def _node(raw: Any, where: str) -> NodeInfo:
    item = _object(raw, where, _NODE_KEYS)
    node_id = _text(item, "id", where)
    where = f"{where} ({node_id!r})"
    devices_raw = _list(item, "devices", where)
    if not devices_raw:
        raise TandemError(f"{where}: devices must list at least one device")
    devices: list[DeviceInfo] = []
    for index, device_raw in enumerate(devices_raw):
        cuda_seen = sum(device.kind == "cuda" for device in devices)
        devices.append(_device(device_raw, f"{where}.devices[{index}]", cuda_seen))
    names = [device.torch_device for device in devices]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate:
        raise TandemError(f"{where}: device {duplicate} appears twice")
    return NodeInfo(
        node_id=node_id,
        name=_text(item, "name", where, default=node_id),
        address=_text(item, "address", where, default=""),
        devices=tuple(devices),
        version=_text(item, "version", where, default=""),
    )


def _device(raw: Any, where: str, cuda_seen: int) -> DeviceInfo:
    item = _object(raw, where, _DEVICE_KEYS)
    kind = item.get("kind")
    if kind not in ("cuda", "cpu", "metal"):
        raise TandemError(
            f"{where}: kind must be 'cuda' or 'cpu', got {kind!r} ('metal' names an Apple-silicon GPU)"
        )
    engine = item.get("engine", "mlx" if kind == "metal" else "torch")
    engines = {"cuda": ("torch",), "metal": ("mlx",), "cpu": ("torch", "mlx")}[kind]
    if engine not in engines:
        raise TandemError(
            f"{where}: a {kind} device runs engine {' or '.join(map(repr, engines))}, not {engine!r}"
        )
    default_index = cuda_seen if kind == "cuda" else 0  # CUDA ordinals count up in listing order
    index = item.get("index", default_index)
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise TandemError(f"{where}: index must be a non-negative integer, got {index!r}")
    total = _number(item, "memory_total_gb", where)
    free = _number(item, "memory_free_gb", where, default=total)
    if free > total:
        raise TandemError(f"{where}: memory_free_gb ({free:g}) is more than memory_total_gb ({total:g})")
    return DeviceInfo(
        kind=kind,
        index=index,
        name=_text(item, "name", where, default=kind),
        memory_total=round(total * 1e9),
        memory_free=round(free * 1e9),
        matmul_flops=_number(item, "matmul_tflops", where, default=0.0, positive=False) * 1e12,
        memory_bandwidth=_number(item, "memory_bandwidth_gb_per_s", where) * 1e9,
        engine=engine,
    )


def _link(raw: Any, where: str, node_ids: set[str]) -> LinkInfo:
    item = _object(raw, where, _LINK_KEYS)
    source, target = _text(item, "source", where), _text(item, "target", where)
    for end in (source, target):
        if end not in node_ids:
            raise TandemError(f"{where}: no node has id {end!r}")
    if source == target:
        raise TandemError(f"{where}: a link joins two different nodes, not {source!r} to itself")
    return LinkInfo(
        source=source,
        target=target,
        latency=_number(item, "latency_ms", where, positive=False) / 1e3,
        bandwidth=_number(item, "bandwidth_gbit_per_s", where) * 1e9 / 8,
    )


def _object(raw: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise TandemError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise TandemError(
            f"{where}: unknown key {unknown[0]!r}; expected one of {', '.join(sorted(allowed))}"
        )
    return raw


def _list(item: dict[str, Any], key: str, where: str) -> list[Any]:
    value = item.get(key)
    if not isinstance(value, list):
        raise TandemError(f"{where}: {key} must be a list")
    return value


def _text(item: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    if key not in item and default is None:
        raise TandemError(f"{where}: {key} is missing")
    value = item.get(key, default)
    if not isinstance(value, str) or (default is None and not value):
        raise TandemError(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value


_REQUIRED = object()


def _number(
    item: dict[str, Any], key: str, where: str, default: Any = _REQUIRED, positive: bool = True
) -> float:
    if key not in item:
        if default is _REQUIRED:
            raise TandemError(f"{where}: {key} is missing")
        return float(default)
    value = item.get(key)
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or (value <= 0 if positive else value < 0)
    ):
        requirement = "a positive number" if positive else "a non-negative number"
        raise TandemError(f"{where}: {key} must be {requirement}, got {value!r}")
    return float(value)
