"""What a placement of an image model will take per image, as a note beside the plan: a
diffusion step is compute-bound, so each stage's time is its blocks' FLOPs at the model's default
size over its device's measured matrix rate (`ImageModelShape.stage_step_seconds`), where the
text placement's prediction (bytes over bandwidth) describes decoding. Pure functions."""

from __future__ import annotations

from dataclasses import replace

from tandem.cluster.placement import Placement
from tandem.cluster.topology import Topology
from tandem.model.image_shapes import ImageModelShape, image_seconds


def image_timing(
    placement: Placement, shape: ImageModelShape, topology: Topology, steps: int, size: int
) -> str | None:
    """One line: each stage's compute-bound step time and an image's transformer time at
    `steps` steps, for the `size`² image `shape` was counted at; None when a stage's device has no measured matrix rate."""
    parts, seconds = [], []
    for index, stage in enumerate(placement.stages):
        rate = 0.0
        for member in stage.members:
            node = topology.node(member.node_id)
            device = node.device(member.torch_device) if node is not None else None
            rate += device.matmul_flops if device is not None else 0.0  # a group splits the work
        if rate <= 0:
            return None
        step = shape.stage_step_seconds(stage.layers.start, stage.layers.end, rate)
        seconds.append(step)
        parts.append(f"stage {index + 1} {step * 1e3:.3g} ms")
    total = image_seconds(seconds, steps)
    return (
        f"compute-bound steps at {size}x{size}: {', '.join(parts)} (FLOPs over each device's matrix "
        f"rate); one image of {steps} steps ≈ {total:.3g} s in the transformer, hops not counted"
    )


def with_image_timing(
    placement: Placement, shape: ImageModelShape, topology: Topology, steps: int, size: int
) -> Placement:
    """The placement with its image timing among its notes (unchanged when it cannot be told)."""
    line = image_timing(placement, shape, topology, steps, size)
    return placement if line is None else replace(placement, notes=(*placement.notes, line))
