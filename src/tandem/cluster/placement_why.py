"""Why a model does not fit, in numbers a person can act on. Pure Python."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tandem.cluster.placement_search import Candidate, LayerCosts
from tandem.sizes import format_bytes

if TYPE_CHECKING:
    from tandem.cluster.placement import PlacementRequest


def why_infeasible(
    costs: LayerCosts, devices: list[Candidate], request: PlacementRequest, forced: bool = False
) -> str:
    """One line: a layer bigger than every device, else the model's needs beside what `devices` offer."""
    shape = costs.shape
    after = (
        f"after a {request.memory_margin * 100:g}% margin and "
        f"{format_bytes(request.device_overhead_bytes)} per device for activations"
    )
    usable = [device for device in devices if device.usable_bytes > 0]
    if not usable:
        return f"none of the {len(devices)} devices has memory to spare {after}"
    layer = oversized_layer(costs, usable)
    if layer is not None:
        largest = max(usable, key=lambda device: device.usable_bytes)
        weights, kv, held = _layer_bytes(costs, largest, layer)
        return (
            f"layer {layer} of {shape.name} alone needs {format_bytes(held)} ({format_bytes(weights)} of weights and "
            f"{format_bytes(kv)} of KV cache for {_tokens(request)}), more than any device can hold: the largest, "
            f"{largest.label}, has {format_bytes(largest.usable_bytes)} free {after}"
        )
    reference = next((device for device in usable if device.kind == "cuda"), usable[0])
    whole = costs.stage(reference, 0, shape.num_layers)
    free = sum(device.usable_bytes for device in usable)
    offer = (
        f"the {len(usable)} given devices have {format_bytes(free)} free"
        if forced
        else f"the cluster has {format_bytes(free)} free on {len(usable)} devices"
    )
    spare_none = len(devices) - len(usable)
    if spare_none:
        offer += f" ({spare_none} more with none to spare)"
    reason = (
        f"{shape.name} needs {format_bytes(whole.weight_bytes)} for weights and {format_bytes(whole.kv_bytes)} for the KV cache "
        f"({_tokens(request)}){_dtype_note(costs, usable, reference)}; {offer} {after}"
    )
    if sum(costs.model_fraction(device) for device in usable) >= 1:
        order = " in the given order" if forced else ""
        reason += f"; that is enough in total, but whole layers do not pack into the devices{order}"
    return reason


def oversized_layer(costs: LayerCosts, devices: list[Candidate]) -> int | None:
    """The first layer that fits on none of `devices` even alone, or None."""
    for layer in range(costs.num_layers):
        if not any(_layer_bytes(costs, device, layer)[2] <= device.usable_bytes for device in devices):
            return layer
    return None


def _layer_bytes(costs: LayerCosts, device: Candidate, layer: int) -> tuple[float, float, float]:
    """(weights, KV, both) of one layer on `device`, without the embedding or head."""
    shape, request = costs.shape_for(device), costs.request
    weights = costs.layer_weight_bytes(device, layer)
    kv = shape.layer_kv_elements[layer] * request.context_length * request.num_sequences * device.value_bytes
    return weights, kv, weights + kv


def _dtype_note(costs: LayerCosts, usable: list[Candidate], reference: Candidate) -> str:
    if costs.format is not None:
        return f" with {costs.format.label} weights"
    others = sorted({device.weight_bytes for device in usable} - {reference.weight_bytes})
    unit = "byte" if reference.weight_bytes == 1 else "bytes"
    note = f" at {reference.weight_bytes:g} {unit} per parameter"
    if others:
        note += (
            f" on {reference.kind.upper()} devices ({'/'.join(f'{size:g}' for size in others)} on the others)"
        )
    return note


def _tokens(request: PlacementRequest) -> str:
    return f"{request.context_length} tokens × {request.num_sequences} sequences"
