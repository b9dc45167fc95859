"""How long a tensor-parallel group takes to sum one decoded token's activations: measured once
at load (every rank of the group together), reported beside the stage, and used by the
benchmark's comm-aware ceiling."""

from __future__ import annotations

import time

import torch

from tandem.engine.parallel.group import AllReduce

REPEATS = 64


def all_reduce_seconds(all_reduce: AllReduce, width: int, device: torch.device, dtype: torch.dtype) -> float:
    """Seconds per decode-sized sum (one row of `width`) with the residual add and norm the
    model runs it with, captured in a CUDA graph as decode replays it. Collective: every rank of
    the group calls it at the same point. GPUs only."""
    message = torch.ones(1, width, dtype=dtype, device=device)
    residual = torch.ones(1, width, dtype=dtype, device=device)
    weight = torch.ones(width, dtype=dtype, device=device)

    def step() -> None:
        all_reduce.add_rms_norm(message, residual, weight, 1e-5)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(REPEATS):
            step()
    graph.replay()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(10):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / (10 * REPEATS)
