"""Messages between runners: a typed header (`tandem.protocol.stages`, JSON through the
protocol's codec) and an optional tensor, as plain tensors.

Everything on the wire is a tensor of bytes or of the tensor's own dtype, sent with
`torch.distributed` point-to-point operations, so any engine that can speak the same sends (an
MLX stage) can join a pipeline. Nothing is pickled; a header that does not decode is a
ProtocolError naming its bad field.

Layout of one message: a fixed-size envelope of bytes — a preamble of int64 [header bytes,
tensor rank, dtype code, dims...] and then the header itself (UTF-8 JSON) when it fits in the
envelope's remaining INLINE_HEADER_BYTES — then the header on its own if it did not fit, then
the tensor if the preamble announces one. A decode step's header fits: a hop is one message,
or two with hidden states.

`start_send` sends without waiting for the receiver: the last stage answers rank 0 that way, so
that with several micro-batches in flight it can take the next step from rank 0 while rank 0 is
still sending it (a blocking send each way would wait on the other forever).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from tandem.protocol import codec
from tandem.protocol.stages import StageMessage

MAX_RANK = 6
PREAMBLE_LENGTH = 3 + MAX_RANK
PREAMBLE_BYTES = 8 * PREAMBLE_LENGTH
INLINE_HEADER_BYTES = 4096  # a decode step's header for 32 sequences fits
ENVELOPE_BYTES = PREAMBLE_BYTES + INLINE_HEADER_BYTES
WIRE_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int64]
NO_TENSOR = -1


class Wire:
    """Messages within one process group: point-to-point between pipeline stages, or broadcast
    from a stage's leader to the other ranks of its tensor-parallel group.

    `device` is where this rank's communication buffers live: CUDA for NCCL, CPU for gloo.
    Ranks are global ranks (`torch.distributed` numbering), also when `group` is a subgroup.
    With `tensor_device`/`tensor_group`, the preamble and header travel on `group` (a gloo group
    on the CPU: reading them needs no GPU synchronization) and the tensor on `tensor_group`.
    """

    def __init__(
        self,
        device: torch.device,
        group: Any = None,
        tensor_device: torch.device | None = None,
        tensor_group: Any = None,
    ) -> None:
        self.device = device
        self.group = group
        self.tensor_device = tensor_device or device
        self.tensor_group = tensor_group if tensor_device is not None else group  # None: the default group

    def send(self, header: StageMessage, tensor: torch.Tensor | None, dst: int) -> None:
        for part, group in self._encode(header, tensor):
            dist.send(part, dst, group=group)

    def start_send(self, header: StageMessage, tensor: torch.Tensor | None, dst: int) -> Sending:
        """Send without waiting for the receiver to take the message; `Sending.wait` waits."""
        parts = self._encode(header, tensor)
        return Sending(parts, [dist.isend(part, dst, group=group) for part, group in parts])

    def recv(self, src: int) -> tuple[StageMessage, torch.Tensor | None]:
        return self._decode(lambda buffer, group: dist.recv(buffer, src, group=group))

    def broadcast(self, header: StageMessage, tensor: torch.Tensor | None, src: int) -> None:
        """From rank `src` (this one) to every other rank of the group."""
        for part, group in self._encode(header, tensor):
            dist.broadcast(part, src, group=group)

    def receive_broadcast(self, src: int) -> tuple[StageMessage, torch.Tensor | None]:
        return self._decode(lambda buffer, group: dist.broadcast(buffer, src, group=group))

    def _encode(self, header: StageMessage, tensor: torch.Tensor | None) -> list[tuple[torch.Tensor, Any]]:
        """The message's parts in order, each with the group it travels on."""
        payload = codec.encode(header)
        preamble = [len(payload), NO_TENSOR, 0] + [0] * MAX_RANK
        if tensor is not None:
            if tensor.dim() > MAX_RANK:
                raise ValueError(f"tensors of rank above {MAX_RANK} cannot be sent")
            preamble[1] = tensor.dim()
            preamble[2] = WIRE_DTYPES.index(tensor.dtype)
            preamble[3 : 3 + tensor.dim()] = list(tensor.shape)
        envelope = bytearray(ENVELOPE_BYTES)
        envelope[:PREAMBLE_BYTES] = torch.tensor(preamble, dtype=torch.int64).numpy().tobytes()
        inline = len(payload) <= INLINE_HEADER_BYTES
        if inline:
            envelope[PREAMBLE_BYTES : PREAMBLE_BYTES + len(payload)] = payload
        parts = [(torch.frombuffer(envelope, dtype=torch.uint8).to(self.device), self.group)]
        if not inline:
            parts.append(
                (torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(self.device), self.group)
            )
        if tensor is not None:
            parts.append((tensor.contiguous().to(self.tensor_device), self.tensor_group))
        return parts

    def _decode(
        self, receive: Callable[[torch.Tensor, Any], Any]
    ) -> tuple[StageMessage, torch.Tensor | None]:
        envelope_tensor = torch.empty(ENVELOPE_BYTES, dtype=torch.uint8, device=self.device)
        receive(envelope_tensor, self.group)
        envelope = envelope_tensor.cpu().numpy().tobytes()
        preamble = torch.frombuffer(bytearray(envelope[:PREAMBLE_BYTES]), dtype=torch.int64).tolist()
        length = preamble[0]
        if length <= INLINE_HEADER_BYTES:
            payload = envelope[PREAMBLE_BYTES : PREAMBLE_BYTES + length]
        else:
            buffer = torch.empty(length, dtype=torch.uint8, device=self.device)
            receive(buffer, self.group)
            payload = buffer.cpu().numpy().tobytes()
        tensor = None
        if preamble[1] != NO_TENSOR:
            shape = preamble[3 : 3 + preamble[1]]
            tensor = torch.empty(shape, dtype=WIRE_DTYPES[preamble[2]], device=self.tensor_device)
            receive(tensor, self.tensor_group)
        return codec.decode(StageMessage, payload), tensor  # after every part: the stream stays aligned


class Sending:
    """A message on its way: its parts are held until the receiver has taken them."""

    def __init__(self, parts: list[tuple[torch.Tensor, Any]], works: list[Any]) -> None:
        self._parts = parts
        self._works = works

    def done(self) -> bool:
        return all(work is None or work.is_completed() for work in self._works)

    def wait(self) -> None:
        for work in self._works:
            if work is not None:  # no work where this rank is not in the part's group
                work.wait()


def pipeline_wire(device: torch.device) -> Wire:
    """The wire between pipeline stages, over the whole process group. With NCCL, the headers
    travel on a gloo group instead (created here: every rank calls this at the same point): a
    stage reads the next step's plan without waiting for its GPU and queues the step's work
    before the hidden states arrive, so no stage's host work adds to a token's time."""
    if dist.get_backend() != "nccl":
        return Wire(torch.device("cpu"))
    return Wire(torch.device("cpu"), dist.new_group(backend="gloo"), device)
