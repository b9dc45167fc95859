"""Decode-sized all-reduces (and, for comparison, those of a 64-sequence step and of a 2048-token
prefill) inside CUDA graphs, every way the engine could run them: NCCL, the
symmetric-memory one-shot kernel after a staging copy (what `SymmetricMemoryAllReduce` did first),
the one-shot kernel that copies the local input itself, the two-shot kernel, and Tandem's own
all-reduce fused with the residual add and RMSNorm (`engine/cuda/push_all_reduce.py`) with 1 to 8
programs a row. Each result is checked against NCCL's sum before it is timed.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tools/measure_all_reduce.py
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist
import torch.distributed._symmetric_memory as symm_mem

from tandem.engine.cuda import kernels
from tandem.engine.cuda.push_all_reduce import MAX_ROWS, PushExchange

# rows, width: a token of an 8B, of a 70B; 16, 64 and 2048 (a prefill) of an 8B
MESSAGES = ((1, 4096), (1, 8192), (16, 4096), (64, 4096), (2048, 4096))
PIECES = (1, 2, 4, 8)
CALLS_PER_GRAPH = 64
REPLAYS = 50


def graph_microseconds(work) -> float:
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        for _ in range(3):
            work()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS_PER_GRAPH):
            work()
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(REPLAYS):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / (REPLAYS * CALLS_PER_GRAPH) * 1e6


def measure(rows: int, width: int, rank: int, size: int, name: str, device: torch.device) -> None:
    count = rows * width
    ops = torch.ops.symm_mem
    buffer = symm_mem.empty(count, dtype=torch.bfloat16, device=device)
    symm_mem.rendezvous(buffer, name)
    local = torch.randn(
        count, dtype=torch.bfloat16, device=device, generator=torch.Generator(device).manual_seed(rank)
    )
    expected = local.clone()
    dist.all_reduce(expected)
    nccl_input = local.clone()

    def staged():
        buffer.copy_(local)
        return ops.one_shot_all_reduce(buffer, "sum", name)

    def two_shot():
        buffer.copy_(local)
        ops.two_shot_all_reduce_(buffer, "sum", name)
        return buffer

    ways = {
        "nccl": lambda: dist.all_reduce(nccl_input) or nccl_input,
        "copy + one_shot": staged,
        "one_shot_copy": lambda: ops.one_shot_all_reduce_copy(buffer, local, "sum", name),
        "copy + two_shot": two_shot,
    }
    message = local.view(rows, width)
    weight = torch.ones(width, dtype=torch.bfloat16, device=device)
    expected_normed = kernels.rms_norm(expected.view(rows, width), weight, 1e-5)[0]
    for pieces in PIECES if rows <= MAX_ROWS else ():
        exchange = PushExchange.over_symmetric_memory(
            dist.group.WORLD, name, device, torch.bfloat16, width, pieces=pieces
        )
        ways[f"fused+norm x{pieces}"] = lambda e=exchange: e.add_rms_norm(message, None, weight, 1e-5)[0]
    for label, work in ways.items():
        try:
            if label != "nccl":
                got = work()
                torch.cuda.synchronize()
                want = expected_normed if label.startswith("fused") else expected
                error = (got.float() - want.float()).abs().max().item()
            else:
                error = 0.0
            micro = graph_microseconds(work)
            line = (
                f"{size} GPUs {2 * count:>8} B  {label:16s} {micro:7.1f} us  "
                f"{2 * count / micro / 1e3:6.1f} GB/s  (max error {error:.3g})"
            )
        except Exception as failure:  # a way this torch lacks is reported, not fatal
            line = f"{size} GPUs {2 * count:>8} B  {label:16s} failed: {failure!r:.160}"
        if rank == 0:
            print(line, flush=True)


def main() -> None:
    rank = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl")
    size, name = dist.get_world_size(), dist.group.WORLD.group_name
    device = torch.device("cuda", rank)
    for rows, width in MESSAGES:
        measure(rows, width, rank, size, name, device)
    dist.barrier()
    os._exit(0)  # process-group teardown after symmetric-memory work can hang


if __name__ == "__main__":
    main()
