"""An image model's transformer split over runner processes: rank 0 runs the first stage and
sends each step's hidden states around the ring of stages; the last stage answers rank 0 with
the velocity, and rank 0's scheduler takes the step.

A batch's context (the pooled prompt, guidance, latent grid, text length) crosses each hop once,
as an `ImageBatch`; each step then carries the two hidden-state streams joined along the tokens,
`[B, T + N, D]`, text first, with its `ImageStep` header. Rank 0 posts its sends without waiting
for them (`Wire.post`), so while it waits for one micro-batch's velocity the others move through
the later stages, and a ring full of micro-batches cannot deadlock on blocking sends.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import torch

from tandem.engine.images.stages import (
    ImageBatchContext,
    StepInputs,
    StepOutputs,
    TransformerStage,
)
from tandem.protocol.codec import ProtocolError
from tandem.protocol.images import ImageBatch, ImageRelease, ImageStep, ImageVelocity
from tandem.protocol.runner import InstanceLayout
from tandem.protocol.stages import KeepAlive, Stop
from tandem.runner.wire import Sending, Wire


def joined(outputs: StepOutputs) -> torch.Tensor:
    """A stage's two streams as the one tensor that crosses the wire, text first."""
    assert outputs.text is not None, "only the last stage ends the text stream"
    return torch.cat([outputs.text, outputs.image], dim=1)


def batch_header(batch_id: int, context: ImageBatchContext) -> ImageBatch:
    guidance = None if context.guidance is None else float(context.guidance[0])
    return ImageBatch(batch_id, guidance, context.grid, context.text_length)


def batch_context(header: ImageBatch, pooled: torch.Tensor) -> ImageBatchContext:
    guidance = None
    if header.guidance is not None:
        guidance = torch.full([pooled.shape[0]], header.guidance, device=pooled.device, dtype=torch.float32)
    return ImageBatchContext(pooled, guidance, tuple(header.grid), header.text_length)  # type: ignore[arg-type]


class RingDriver:
    """Rank 0's `StageDriver`: the first stage here, the others in the runners of the ring."""

    def __init__(self, first: TransformerStage, wire: Wire, layout: InstanceLayout) -> None:
        if layout.num_stages < 2:
            raise ValueError("a ring needs at least two stages; use a LocalDriver for one")
        self.first = first
        self.device = next(first.model.parameters()).device
        self.wire = wire
        self.next_leader = layout.leader(1)
        self.last_leader = layout.leader(layout.num_stages - 1)
        self._known: set[int] = set()  # batches whose context the other stages hold
        self._in_flight: deque[int] = deque()
        self._posted: list[Sending] = []

    def _post(self, header, tensor: torch.Tensor | None) -> None:
        self._posted = [posted for posted in self._posted if not posted.done()]
        self._posted.append(self.wire.start_send(header, tensor, dst=self.next_leader))

    def submit(self, batch_id: int, step: StepInputs) -> None:
        if batch_id not in self._known:
            self._post(batch_header(batch_id, step.context), step.context.pooled)
            self._known.add(batch_id)
        outputs = self.first.forward(step)
        timestep = float(step.timestep[0])
        self._post(ImageStep(batch_id, timestep), joined(outputs))
        self._in_flight.append(batch_id)

    def collect(self) -> torch.Tensor:
        expected = self._in_flight.popleft()
        header, velocity = self.wire.recv(src=self.last_leader)
        if not isinstance(header, ImageVelocity) or velocity is None:
            raise ProtocolError(f"the last stage answered a step with a {type(header).__name__} message")
        if header.batch_id != expected:
            raise ProtocolError(f"the last stage answered batch {header.batch_id}, expected {expected}")
        return velocity.to(self.device)

    def release(self, batch_ids: Sequence[int]) -> None:
        """Drain what is still in flight (a request stopped between steps), then have every stage
        forget the batches."""
        while self._in_flight:
            self.collect()
        ids = tuple(b for b in batch_ids if b in self._known)
        self._known.difference_update(ids)
        if ids:
            self._post(ImageRelease(ids), None)

    def keep_alive(self) -> None:
        self._post(KeepAlive(), None)

    def shutdown(self) -> None:
        self._post(Stop(), None)
        for posted in self._posted:
            posted.wait()


@torch.inference_mode()
def serve_image_stage(stage: TransformerStage, wire: Wire, layout: InstanceLayout, index: int) -> None:
    """The loop of every stage but the first: keep each batch's context, run each step on the
    joined hidden states, pass it on (or, on the last stage, answer rank 0 with the velocity)."""
    is_last = index == layout.num_stages - 1
    previous = layout.leader(index - 1)
    following = None if is_last else layout.leader(index + 1)
    contexts: dict[int, ImageBatchContext] = {}
    device = next(stage.model.parameters()).device
    while True:
        header, tensor = wire.recv(src=previous)
        tensor = None if tensor is None else tensor.to(device)
        match header:
            case ImageBatch(batch_id=batch_id) if tensor is not None:
                contexts[batch_id] = batch_context(header, tensor)
            case ImageStep(batch_id=batch_id, timestep=timestep) if tensor is not None:
                context = contexts.get(batch_id)
                if context is None:
                    raise ProtocolError(f"stage {index} received a step of unknown batch {batch_id}")
                text_length = context.text_length
                step = StepInputs(
                    context=context,
                    image=tensor[:, text_length:],
                    text=tensor[:, :text_length],
                    timestep=torch.full(
                        [tensor.shape[0]], timestep, dtype=tensor.dtype, device=tensor.device
                    ),
                )
                outputs = stage.forward(step)
                if following is None:
                    wire.send(ImageVelocity(batch_id), outputs.image, dst=0)
                else:
                    wire.send(header, joined(outputs), dst=following)
                continue
            case ImageRelease(batch_ids=batch_ids):
                for batch_id in batch_ids:
                    contexts.pop(batch_id, None)
            case KeepAlive() | Stop():
                pass
            case _:
                raise ProtocolError(f"image stage {index} received a {type(header).__name__} message")
        if following is not None:
            wire.send(header, tensor, dst=following)
        if isinstance(header, Stop):
            return
