"""Where a captured decode step's GPU time goes: its replay time, and its kernels by total time.
Used by `tools/profile_decode.py` (one GPU) and `tandem bench --plans ... --profile` (every plan,
tensor-parallel ranks replaying together so their collectives pair up)."""

from __future__ import annotations

import torch


def replay_seconds(graph: torch.cuda.CUDAGraph, repeats: int = 50) -> float:
    """GPU seconds per replay of `graph`, back to back (no host work between replays)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(repeats):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000 / repeats


def kernel_table(graph: torch.cuda.CUDAGraph, replays: int = 5, rows: int = 18) -> str:
    """The kernels of `replays` replays, by total GPU time (torch.profiler's table)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=60)


def batch_one_graph(engine) -> torch.cuda.CUDAGraph | None:
    """The decode graph for one sequence that `engine` captured, if it runs on graphs."""
    graphs = getattr(getattr(engine.executor, "runner", None), "graphs", None)
    if graphs is None or 1 not in graphs.graphs:
        return None
    return graphs.graphs[1][0]
