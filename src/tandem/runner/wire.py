"""Messages between pipeline stages: a JSON header and an optional tensor, as plain tensors.

Everything on the wire is a tensor of integers or of the activation dtype, sent with
`torch.distributed` point-to-point operations, so any engine that can speak the same three
sends (an MLX stage, later) can join a pipeline. Nothing is pickled.

Layout of one message: a fixed-size int64 preamble [header bytes, tensor rank, dtype code,
dims...], the header as uint8 UTF-8 JSON, then the tensor if the preamble announces one.
"""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.distributed as dist

MAX_RANK = 6
PREAMBLE_LENGTH = 3 + MAX_RANK
WIRE_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int64]
NO_TENSOR = -1


class Wire:
    """Point-to-point messages within one process group.

    `device` is where this rank's communication buffers live: CUDA for NCCL, CPU for gloo.
    """

    def __init__(self, device: torch.device, group: Any = None) -> None:
        self.device = device
        self.group = group

    def send(self, header: dict[str, Any], tensor: torch.Tensor | None, dst: int) -> None:
        payload = torch.frombuffer(bytearray(json.dumps(header).encode()), dtype=torch.uint8)
        preamble = [payload.numel(), NO_TENSOR, 0] + [0] * MAX_RANK
        if tensor is not None:
            if tensor.dim() > MAX_RANK:
                raise ValueError(f"tensors of rank above {MAX_RANK} cannot be sent")
            preamble[1] = tensor.dim()
            preamble[2] = WIRE_DTYPES.index(tensor.dtype)
            preamble[3 : 3 + tensor.dim()] = list(tensor.shape)
        dist.send(torch.tensor(preamble, dtype=torch.int64, device=self.device), dst, group=self.group)
        dist.send(payload.to(self.device), dst, group=self.group)
        if tensor is not None:
            dist.send(tensor.contiguous().to(self.device), dst, group=self.group)

    def recv(self, src: int) -> tuple[dict[str, Any], torch.Tensor | None]:
        preamble_tensor = torch.empty(PREAMBLE_LENGTH, dtype=torch.int64, device=self.device)
        dist.recv(preamble_tensor, src, group=self.group)
        preamble = preamble_tensor.tolist()
        payload = torch.empty(preamble[0], dtype=torch.uint8, device=self.device)
        dist.recv(payload, src, group=self.group)
        header = json.loads(payload.cpu().numpy().tobytes().decode())
        if preamble[1] == NO_TENSOR:
            return header, None
        shape = preamble[3 : 3 + preamble[1]]
        tensor = torch.empty(shape, dtype=WIRE_DTYPES[preamble[2]], device=self.device)
        dist.recv(tensor, src, group=self.group)
        return header, tensor
