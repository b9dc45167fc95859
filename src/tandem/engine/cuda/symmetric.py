"""All-reduce for decode-sized messages through PyTorch's symmetric memory (one-shot: every
rank reads every peer's buffer over NVLink and sums), capturable in CUDA graphs.

On two H100s an 8 KB all-reduce takes ~8 µs this way against ~16–19 µs through NCCL (both inside
a CUDA graph; MEASUREMENTS.md), and a decode step does two per layer. Messages larger than the
buffer (prefill) go through NCCL. NVLink multicast is never used (the one-shot kernel needs
none; the machines keep it off).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger("tandem.allreduce")

MAX_ELEMENTS = 16 * 8192  # a decode step of up to 16 sequences of hidden size 8192


class SymmetricMemoryAllReduce:
    """Sum over the group: one-shot through a symmetric buffer when the message fits, else NCCL."""

    def __init__(
        self, process_group: Any, device: torch.device, dtype: torch.dtype, max_elements: int = MAX_ELEMENTS
    ) -> None:
        import torch.distributed._symmetric_memory as symm_mem

        self.process_group = process_group
        self.group_name = (
            process_group.group_name if process_group is not None else dist.group.WORLD.group_name
        )
        self.max_elements = max_elements
        self.dtype = dtype
        # Allocated and exchanged once, collectively: every rank builds this at the same point.
        self.buffer = symm_mem.empty(max_elements, dtype=dtype, device=device)
        symm_mem.rendezvous(self.buffer, self.group_name)
        self.broken = False

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        count = tensor.numel()
        if self.broken or count > self.max_elements or tensor.dtype != self.dtype:
            dist.all_reduce(tensor, group=self.process_group)
            return tensor
        staged = self.buffer[:count]
        staged.copy_(tensor.reshape(-1))
        try:
            summed = torch.ops.symm_mem.one_shot_all_reduce(staged, "sum", self.group_name)
        except RuntimeError as error:
            if torch.cuda.is_current_stream_capturing():
                raise
            # Every rank takes the same path on the same call, so they fall back together.
            log.warning("symmetric-memory all-reduce failed (%s); using NCCL", error)
            self.broken = True
            dist.all_reduce(tensor, group=self.process_group)
            return tensor
        return summed.view(tensor.shape)


def symmetric_memory_available() -> bool:
    try:
        import torch.distributed._symmetric_memory
    except ImportError:
        return False
    return hasattr(torch.ops, "symm_mem") and hasattr(torch.ops.symm_mem, "one_shot_all_reduce")
