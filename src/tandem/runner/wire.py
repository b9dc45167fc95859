"""Messages between runners: a JSON header and an optional tensor, as plain tensors.

Everything on the wire is a tensor of integers or of the activation dtype, sent with
`torch.distributed` point-to-point operations, so any engine that can speak the same three
sends (an MLX stage, later) can join a pipeline. Nothing is pickled.

Layout of one message: a fixed-size int64 preamble [header bytes, tensor rank, dtype code,
dims...], the header as uint8 UTF-8 JSON, then the tensor if the preamble announces one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

MAX_RANK = 6
PREAMBLE_LENGTH = 3 + MAX_RANK
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
        self.tensor_group = tensor_group if tensor_device is not None else group

    def send(self, header: dict[str, Any], tensor: torch.Tensor | None, dst: int) -> None:
        for part, group in self._encode(header, tensor):
            dist.send(part, dst, group=group)

    def recv(self, src: int) -> tuple[dict[str, Any], torch.Tensor | None]:
        return self._decode(lambda buffer, group: dist.recv(buffer, src, group=group))

    def broadcast(self, header: dict[str, Any], tensor: torch.Tensor | None, src: int) -> None:
        """From rank `src` (this one) to every other rank of the group."""
        for part, group in self._encode(header, tensor):
            dist.broadcast(part, src, group=group)

    def receive_broadcast(self, src: int) -> tuple[dict[str, Any], torch.Tensor | None]:
        return self._decode(lambda buffer, group: dist.broadcast(buffer, src, group=group))

    def _encode(self, header: dict[str, Any], tensor: torch.Tensor | None) -> list[tuple[torch.Tensor, Any]]:
        """The message's parts in order, each with the group it travels on."""
        payload = torch.frombuffer(bytearray(json.dumps(header).encode()), dtype=torch.uint8)
        preamble = [payload.numel(), NO_TENSOR, 0] + [0] * MAX_RANK
        parts = [(payload.to(self.device), self.group)]
        if tensor is not None:
            if tensor.dim() > MAX_RANK:
                raise ValueError(f"tensors of rank above {MAX_RANK} cannot be sent")
            preamble[1] = tensor.dim()
            preamble[2] = WIRE_DTYPES.index(tensor.dtype)
            preamble[3 : 3 + tensor.dim()] = list(tensor.shape)
            parts.append((tensor.contiguous().to(self.tensor_device), self.tensor_group))
        return [(torch.tensor(preamble, dtype=torch.int64, device=self.device), self.group), *parts]

    def _decode(
        self, receive: Callable[[torch.Tensor, Any], Any]
    ) -> tuple[dict[str, Any], torch.Tensor | None]:
        preamble_tensor = torch.empty(PREAMBLE_LENGTH, dtype=torch.int64, device=self.device)
        receive(preamble_tensor, self.group)
        preamble = preamble_tensor.tolist()
        payload = torch.empty(preamble[0], dtype=torch.uint8, device=self.device)
        receive(payload, self.group)
        header = json.loads(payload.cpu().numpy().tobytes().decode())
        if preamble[1] == NO_TENSOR:
            return header, None
        shape = preamble[3 : 3 + preamble[1]]
        tensor = torch.empty(shape, dtype=WIRE_DTYPES[preamble[2]], device=self.tensor_device)
        receive(tensor, self.tensor_group)
        return header, tensor
