"""The tensor-parallel group a model shard computes with, and its two collectives.

The layers never call `torch.distributed` themselves: they call the group's `all_reduce` and
`all_gather` objects. The defaults use `torch.distributed` on the group's process group (gloo
on CPUs, NCCL on GPUs). A faster all-reduce is another `AllReduce` given to the group (or set
after loading with `use_all_reduce(model, fn)`): on GPUs of one host, PyTorch's symmetric-memory
one-shot all-reduce captured in a CUDA graph (`engine/cuda/symmetric.py`). A row-parallel layer
may leave its sum to the norm after it (`AllReduce.add_rms_norm`), which that all-reduce runs as
one fused kernel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist

from tandem.engine import ops


class AllReduce:
    """Sum over the group's ranks; subclasses implement `__call__`."""

    name = "torch.distributed"  # how it sums, for reports

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of `tensor` over the group's ranks. May reduce in place and return `tensor`,
        or return a new tensor; callers use the return value only."""
        raise NotImplementedError

    def add_rms_norm(
        self, partial: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`ops.add_rms_norm` of `partial` summed over the group: what a row-parallel layer's
        output meets next. Here the sum and the norm are two steps; an all-reduce that can fuse
        them (the symmetric-memory one on GPUs) overrides this."""
        return ops.add_rms_norm(self(partial), residual, weight, eps)


class AllGather(Protocol):
    def __call__(self, tensor: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
        """Every rank's `tensor` ([..., sizes[rank]]) concatenated along the last dimension, in
        rank order, on every rank."""
        ...


class ProcessGroupAllReduce(AllReduce):
    """`torch.distributed.all_reduce` (sum, in place) on one process group."""

    def __init__(self, process_group: Any = None) -> None:
        self.process_group = process_group
        if dist.is_initialized():
            self.name = f"torch.distributed over {dist.get_backend(process_group)}"

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.process_group)
        return tensor


class ProcessGroupAllGather:
    """`torch.distributed.all_gather` of last-dimension blocks that may differ by a few columns:
    each rank pads its block to the largest, and the padding is cut after the gather."""

    def __init__(self, process_group: Any = None) -> None:
        self.process_group = process_group

    def __call__(self, tensor: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
        widest = max(sizes)
        padded = torch.nn.functional.pad(tensor, (0, widest - tensor.shape[-1])).contiguous()
        blocks = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(blocks, padded, group=self.process_group)
        return torch.cat([block[..., :size] for block, size in zip(blocks, sizes, strict=True)], dim=-1)


@dataclass(frozen=True)
class TensorParallelGroup:
    """This process's place in a tensor-parallel group, and the collectives the shard uses.

    `rank` and `size` are within the group (0 … size-1), not the global process-group ranks.
    """

    rank: int
    size: int
    all_reduce: AllReduce
    all_gather: AllGather

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.size:
            raise ValueError(f"tensor-parallel rank {self.rank} is outside a group of {self.size}")

    @classmethod
    def from_process_group(
        cls, process_group: Any = None, all_reduce: AllReduce | None = None
    ) -> TensorParallelGroup:
        """The group of every rank of `process_group` (None: the default group, as after
        `torch.distributed.init_process_group`), with torch.distributed collectives unless an
        `all_reduce` is given."""
        return cls(
            rank=dist.get_rank(process_group),
            size=dist.get_world_size(process_group),
            all_reduce=all_reduce or ProcessGroupAllReduce(process_group),
            all_gather=ProcessGroupAllGather(process_group),
        )
